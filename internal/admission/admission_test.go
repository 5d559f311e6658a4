package admission_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

func limits(m *metrics.Metrics) *admission.Limits {
	return admission.New(admission.Config{Calls: 3, Waiters: 2, Sessions: 2, Subscriptions: 1, ResponseBytes: 100}, m)
}

func mustLimit(t *testing.T, err error, name string) {
	t.Helper()
	var le *admission.LimitError
	if !errors.As(err, &le) || !errors.Is(err, admission.ErrLimitExceeded) || le.Limit != name || le.RetryAfter <= 0 {
		t.Fatalf("err = %v; want a LimitError for %s with a retry hint", err, name)
	}
}

// TestGatesNeverPassTheirLimit: many goroutines racing for a limit are
// admitted exactly up to it, every other refused and counted.
func TestGatesNeverPassTheirLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		max   int
		begin func(*admission.Limits, context.Context) (*admission.Ticket, error)
	}{
		{admission.Calls, 3, func(l *admission.Limits, ctx context.Context) (*admission.Ticket, error) {
			_, tk, err := l.BeginCall(ctx)
			return tk, err
		}},
		{admission.Sessions, 2, func(l *admission.Limits, ctx context.Context) (*admission.Ticket, error) {
			_, tk, err := l.BeginSession(ctx)
			return tk, err
		}},
		{admission.Subscriptions, 1, func(l *admission.Limits, ctx context.Context) (*admission.Ticket, error) {
			_, tk, err := l.BeginSubscription(ctx)
			return tk, err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New()
			l := limits(m)
			var admitted, refused atomic.Int64
			var mu sync.Mutex
			var tickets []*admission.Ticket
			var wg sync.WaitGroup
			for range 200 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tk, err := tc.begin(l, context.Background())
					if err != nil {
						mustLimit(t, err, tc.name)
						refused.Add(1)
						return
					}
					admitted.Add(1)
					mu.Lock()
					tickets = append(tickets, tk)
					mu.Unlock()
				}()
			}
			wg.Wait()
			if admitted.Load() != int64(tc.max) || l.InUse(tc.name) != int64(tc.max) {
				t.Fatalf("admitted %d, in use %d; want %d", admitted.Load(), l.InUse(tc.name), tc.max)
			}
			if got := testutil.ToFloat64(m.LimitRejections.WithLabelValues(tc.name)); got != float64(refused.Load()) {
				t.Errorf("rejections counted %v; want %d", got, refused.Load())
			}
			for _, tk := range tickets {
				tk.End()
			}
			if l.InUse(tc.name) != 0 {
				t.Fatalf("in use %d after End", l.InUse(tc.name))
			}
			if tk, err := tc.begin(l, context.Background()); err != nil {
				t.Fatalf("after End: %v", err)
			} else {
				tk.End()
			}
		})
	}
}

// TestWaitGivesTheCallSlotBack: a waiting call holds a waiter slot, not a
// call slot; past max_waiters a wait is refused and the call keeps its
// slot; a context without a ticket (inside the sidecar) always waits.
func TestWaitGivesTheCallSlotBack(t *testing.T) {
	l := limits(nil)
	ctx, call, err := l.BeginCall(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	done, err := admission.BeginWait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l.InUse(admission.Calls) != 0 || l.InUse(admission.Waiters) != 1 {
		t.Fatalf("calls %d waiters %d; want 0 and 1", l.InUse(admission.Calls), l.InUse(admission.Waiters))
	}
	done()
	done() // once only
	call.End()
	if l.InUse(admission.Calls) != 0 || l.InUse(admission.Waiters) != 0 {
		t.Fatalf("calls %d waiters %d after the ends", l.InUse(admission.Calls), l.InUse(admission.Waiters))
	}

	var ends []func()
	for range 2 {
		ctx, _, err := l.BeginCall(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		end, err := admission.BeginWait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, end)
	}
	ctx, call, err = l.BeginCall(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = admission.BeginWait(ctx)
	mustLimit(t, err, admission.Waiters)
	if l.InUse(admission.Calls) != 1 {
		t.Fatalf("a refused wait gave its call slot back: calls %d", l.InUse(admission.Calls))
	}
	call.End()
	for _, end := range ends {
		end()
	}
	if end, err := admission.BeginWait(context.Background()); err != nil {
		t.Fatalf("wait without a ticket: %v", err)
	} else {
		end()
	}
}

// TestBudget: reservations never pass the budget; bytes kept by a call
// are given back at its End, or handed on by TakeBytes.
func TestBudget(t *testing.T) {
	l := limits(nil)
	b := l.Budget()
	if err := b.Reserve(60); err != nil {
		t.Fatal(err)
	}
	mustLimit(t, b.Reserve(41), admission.ResponseBytes)
	if err := b.Reserve(40); err != nil {
		t.Fatal(err)
	}
	if b.Keep(context.Background(), 40) {
		t.Fatal("Keep without a call reported true")
	}
	b.Release(40)

	ctx, call, err := l.BeginCall(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !b.Keep(ctx, 60) {
		t.Fatal("Keep with a call reported false")
	}
	call.End()
	if got := l.InUse(admission.ResponseBytes); got != 0 {
		t.Fatalf("bytes in use after End: %d", got)
	}

	ctx, call, _ = l.BeginCall(context.Background())
	_ = b.Reserve(70)
	b.Keep(ctx, 70)
	if n := call.TakeBytes(); n != 70 {
		t.Fatalf("TakeBytes = %d", n)
	}
	call.End()
	if got := l.InUse(admission.ResponseBytes); got != 70 {
		t.Fatalf("bytes taken were released by End: in use %d", got)
	}
	b.Release(70)

	var none *admission.Budget // no limits: everything fits
	if err := none.Reserve(1 << 40); err != nil || !none.Keep(context.Background(), 1) {
		t.Fatal("nil budget refused")
	}
	none.Release(1 << 40)
}
