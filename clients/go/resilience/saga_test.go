package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// TestSagaStepFailureCompensates runs a saga through a sidecar of its own
// on Redis whose config declares the upstream the compensations go to:
// the third step fails, so the sidecar undoes all three, newest first
// (the third too: it was recorded before it was attempted). The second
// step is recorded with AddCompensation and done by the test itself.
func TestSagaStepFailureCompensates(t *testing.T) {
	scenario(t, "saga-compensates-in-reverse")
	var mu sync.Mutex
	var undone []string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		undone = append(undone, r.URL.Path+" "+r.Header.Get("Idempotency-Key"))
		mu.Unlock()
	}))
	defer hs.Close()
	cfg := configFile(t, fmt.Sprintf("upstreams:\n  inventory: {url: %q}\n", hs.URL))
	sagas := v1.NewSagaServiceClient(dial(t, redisSidecars(t, 1, cfg...)[0].Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s, err := resilience.StartSaga(ctx, sagas, "order-7", "place-order", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	undo := func(what string) *v1.Compensation {
		return &v1.Compensation{Upstream: "inventory", Method: "POST", Path: "/undo/" + what}
	}
	var ran []string
	if err := s.Step(ctx, "reserve", undo("reserve"), func(context.Context) error { ran = append(ran, "reserve"); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCompensation(ctx, "charge", undo("charge")); err != nil {
		t.Fatal(err)
	}
	ran = append(ran, "charge")
	boom := errors.New("carrier refused the parcel")
	err = s.Step(ctx, "ship", undo("ship"), func(context.Context) error { ran = append(ran, "ship"); return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Step = %v, want the step's error", err)
	}
	testkit.EventuallyNil(t, 20*time.Second, "saga order-7 compensated", func() error {
		g, err := sagas.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "order-7"})
		if err == nil && g.GetSaga().GetState() != v1.SagaState_SAGA_STATE_COMPENSATED {
			err = fmt.Errorf("saga %v", g.GetSaga())
		}
		return err
	})
	if g, err := sagas.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "order-7"}); err != nil || !strings.Contains(g.GetSaga().GetReason(), "carrier refused") {
		t.Fatalf("reason %q, %v", g.GetSaga().GetReason(), err)
	}
	mu.Lock()
	got := strings.Join(undone, ", ")
	mu.Unlock()
	if got != "/undo/ship order-7:ship, /undo/charge order-7:charge, /undo/reserve order-7:reserve" || strings.Join(ran, ",") != "reserve,charge,ship" {
		t.Fatalf("ran %v; compensations %s", ran, got)
	}
	// The saga is over: no more steps, and it cannot complete.
	called := false
	err = s.Step(ctx, "late", undo("late"), func(context.Context) error { called = true; return nil })
	if !errors.Is(err, resilience.ErrSagaStateConflict) || called {
		t.Fatalf("step after the abort: %v (ran %v)", err, called)
	}
	if err := s.Complete(ctx); !errors.Is(err, resilience.ErrSagaStateConflict) {
		t.Fatalf("complete after the abort: %v", err)
	}
}

// A saga without steps starts, completes and aborts; StartSaga of a taken
// id with another name is a conflict.
func TestSagaWithoutSteps(t *testing.T) {
	conn, err := resilience.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sagas := v1.NewSagaServiceClient(conn)
	ctx := context.Background()
	s, err := resilience.StartSaga(ctx, sagas, "empty-1", "noop", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := resilience.StartSaga(ctx, sagas, "empty-1", "other", 0); !errors.Is(err, resilience.ErrSagaStateConflict) {
		t.Fatalf("start with another name: %v", err)
	}
	s2, _ := resilience.StartSaga(ctx, sagas, "empty-2", "noop", 0)
	if err := s2.Abort(ctx, "bad\nreason "+strings.Repeat("é", 400)); err != nil {
		t.Fatalf("abort with an unruly reason: %v", err)
	}
	if _, err := sagas.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "empty-9"}); !errors.Is(resilience.FromError(err), resilience.ErrSagaNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
}
