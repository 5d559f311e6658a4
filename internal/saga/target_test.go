package saga_test

import (
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// TestSagaCompensationPathBypassesRefused: a compensation's path obeys the
// rule of every upstream call (upstream.CheckPath) when the step is
// recorded, so a path that some server normalises out of the base is never
// stored to run later.
func TestSagaCompensationPathBypassesRefused(t *testing.T) {
	f := newFixture(t, nil, nil)
	ctx := testCtx(t)
	if _, _, err := f.svc.Start(ctx, saga.NewSaga{ID: "o-b", Name: "order", Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"/..;/admin", "/a/..;x=1/admin", "/%2e%2e/admin", "/%252e%252e/admin", "/%25252e%25252e/admin",
		"/%c0%ae%c0%ae/admin", "/a\\..\\admin", "/a%5c..%5cadmin", "/./admin", "//evil.example/x",
		"/a%252fadmin", "/admin%00", "/%ef%bc%8e%ef%bc%8e/admin",
	} {
		_, _, err := f.svc.RecordStep(ctx, "o-b", "s", saga.Compensation{Upstream: "inventory", Method: "POST", Path: p})
		var re *upstream.RequestError
		if !errors.As(err, &re) || re.Field != "compensation.path" || !re.Target {
			t.Errorf("path %q: err %v; want a refused target on compensation.path", p, err)
		}
	}
	if s, _ := f.svc.Get(ctx, "o-b"); s.StepCount != 0 {
		t.Fatalf("%d steps with refused paths were recorded", s.StepCount)
	}
	if _, _, err := f.svc.RecordStep(ctx, "o-b", "s", saga.Compensation{Upstream: "inventory", Method: "POST", Path: "/reservations/r-1/cancel"}); err != nil {
		t.Fatalf("a plain path was refused: %v", err)
	}
}
