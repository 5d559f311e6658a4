package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func breakers(t *testing.T) v1.BreakerServiceClient {
	t.Helper()
	conn, err := resilience.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewBreakerServiceClient(conn)
}

func guardCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func counts(t *testing.T, c v1.BreakerServiceClient, name string) *v1.Breaker {
	t.Helper()
	r, err := c.GetBreaker(guardCtx(t), &v1.GetBreakerRequest{Breaker: name})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetBreaker()
}

var errDown = errors.New("dependency down")

func TestGuardOpensAndFailsFast(t *testing.T) {
	c := breakers(t)
	ctx := guardCtx(t)
	name := "guard/" + rand.Text()
	if err := resilience.Guard(ctx, c, name, func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for range 5 { // the default policy: 5 failures in a row
		if err := resilience.Guard(ctx, c, name, func(context.Context) error { return errDown }); !errors.Is(err, errDown) {
			t.Fatalf("Guard = %v, want fn's error", err)
		}
	}
	ran := false
	err := resilience.Guard(ctx, c, name, func(context.Context) error { ran = true; return nil })
	var e *resilience.Error
	if ran || !errors.Is(err, resilience.ErrBreakerOpen) || !errors.As(err, &e) || e.RetryDelay <= 0 ||
		status.Code(err) != codes.Unavailable {
		t.Fatalf("open breaker: ran %v, err %v", ran, err)
	}
	b := counts(t, c, name)
	if b.GetState() != v1.BreakerState_BREAKER_STATE_OPEN || b.GetCounts().GetOutstandingPermits() != 0 {
		t.Fatalf("breaker %v", b)
	}
}

func TestGuardOutcomes(t *testing.T) {
	c := breakers(t)
	name := "guard/" + rand.Text()

	// A cancelled caller is not the dependency's fault.
	ctx, cancel := context.WithCancel(guardCtx(t))
	err := resilience.Guard(ctx, c, name, func(ctx context.Context) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Guard = %v", err)
	}
	if b := counts(t, c, name); b.GetCounts().GetCalls() != 0 || b.GetCounts().GetOutstandingPermits() != 0 {
		t.Fatalf("a cancelled call was counted, or its permit left out: %v", b.GetCounts())
	}

	// WithOutcome: "not found" is not a failure.
	errNotFound := errors.New("not found")
	notFailure := resilience.WithOutcome(func(err error) v1.CallOutcome {
		if errors.Is(err, errNotFound) {
			return v1.CallOutcome_CALL_OUTCOME_SUCCESS
		}
		return v1.CallOutcome_CALL_OUTCOME_FAILURE
	})
	for range 3 {
		if err := resilience.Guard(guardCtx(t), c, name, func(context.Context) error { return errNotFound }, notFailure); !errors.Is(err, errNotFound) {
			t.Fatal(err)
		}
	}
	if b := counts(t, c, name); b.GetCounts().GetCalls() != 3 || b.GetCounts().GetFailures() != 0 {
		t.Fatalf("counts %v, want 3 calls and no failure", b.GetCounts())
	}

	// A panic is a failure, and still a panic.
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic was swallowed")
			}
		}()
		_ = resilience.Guard(guardCtx(t), c, name, func(context.Context) error { panic("boom") })
	}()
	if b := counts(t, c, name); b.GetCounts().GetFailures() != 1 || b.GetCounts().GetOutstandingPermits() != 0 {
		t.Fatalf("after a panic: %v", b.GetCounts())
	}
}

func TestGuardInvalidName(t *testing.T) {
	err := resilience.Guard(guardCtx(t), breakers(t), "", func(context.Context) error { return nil })
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrInvalidArgument) || !errors.As(err, &e) || e.Violations["breaker"] == "" {
		t.Fatalf("Guard with an empty name = %v", err)
	}
}

// WithPermitTTL bounds how long the sidecar waits for fn's outcome: a call
// that outlives it is counted as a failure while fn still runs (with the
// default, ctx's remaining minute plus 5s, it would stay outstanding), and
// the late report changes nothing. A TTL out of the sidecar's range is
// refused before fn runs.
func TestGuardPermitTTL(t *testing.T) {
	c := breakers(t)
	name := "guard/" + rand.Text()
	err := resilience.Guard(guardCtx(t), c, name, func(context.Context) error {
		testkit.EventuallyNil(t, 30*time.Second, "the unreported call counted as failed", func() error {
			if b := counts(t, c, name); b.GetCounts().GetFailures() != 1 || b.GetCounts().GetOutstandingPermits() != 0 {
				return fmt.Errorf("counts %v", b.GetCounts())
			}
			return nil
		})
		return nil // reported too late: the permit expired
	}, resilience.WithPermitTTL(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if b := counts(t, c, name); b.GetCounts().GetCalls() != 1 || b.GetCounts().GetFailures() != 1 {
		t.Fatalf("after the late success: %v; want the one call counted as failed", b.GetCounts())
	}

	ran := false
	err = resilience.Guard(guardCtx(t), c, name, func(context.Context) error { ran = true; return nil }, resilience.WithPermitTTL(time.Hour))
	var e *resilience.Error
	if ran || !errors.Is(err, resilience.ErrInvalidArgument) || !errors.As(err, &e) || e.Violations["permit_ttl"] == "" {
		t.Fatalf("a permit TTL of an hour: ran %v, %v; want ErrInvalidArgument naming permit_ttl", ran, err)
	}
}

// Guard around a failing function opens its breaker: then the function is
// not run and the error carries the retry delay; after the open duration
// a success (the half-open probe) closes the breaker again.
func TestGuardOpensAndRecovers(t *testing.T) {
	scenario(t, "breaker-guard-opens-and-recovers")
	const openFor = time.Second
	cfg := configFile(t, fmt.Sprintf("breakers:\n  flaky: {consecutive_failures: 3, open_duration: %v}\n", openFor))
	c := v1.NewBreakerServiceClient(dial(t, redisSidecars(t, 1, cfg...)[0].Addr()))
	ctx := guardCtx(t)
	for range 3 {
		if err := resilience.Guard(ctx, c, "flaky", func(context.Context) error { return errDown }); !errors.Is(err, errDown) {
			t.Fatalf("Guard = %v, want fn's error", err)
		}
	}
	ran := false
	err := resilience.Guard(ctx, c, "flaky", func(context.Context) error { ran = true; return nil })
	var e *resilience.Error
	if ran || !errors.Is(err, resilience.ErrBreakerOpen) || !errors.As(err, &e) || e.RetryDelay <= 0 || e.RetryDelay > openFor {
		t.Fatalf("open breaker: ran %v, %v; want ErrBreakerOpen with a retry delay up to %v", ran, err, openFor)
	}
	time.Sleep(e.RetryDelay) // real time: the breaker stays open this long
	testkit.EventuallyNil(t, 10*time.Second, "a guarded success after the open duration", func() error {
		return resilience.Guard(ctx, c, "flaky", func(context.Context) error { return nil })
	})
	if b := counts(t, c, "flaky"); b.GetState() != v1.BreakerState_BREAKER_STATE_CLOSED {
		t.Fatalf("after the probe succeeded: %v; want closed", b)
	}
	if err := resilience.Guard(ctx, c, "flaky", func(context.Context) error { return nil }); err != nil {
		t.Fatalf("closed again: %v", err)
	}
}
