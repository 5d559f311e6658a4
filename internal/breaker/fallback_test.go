package breaker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// flakyStore is a Store that can be switched off: every call then fails
// as an unreachable Redis would.
type flakyStore struct {
	breaker.Store
	down  atomic.Bool
	calls atomic.Int64
}

var errDown = store.Unavailable(errors.New("connection refused"))

func (f *flakyStore) fail() error {
	f.calls.Add(1)
	if f.down.Load() {
		return errDown
	}
	return nil
}

func (f *flakyStore) Allow(ctx context.Context, name string, p breaker.Policy, a breaker.AllowArgs) (breaker.Allowance, error) {
	if err := f.fail(); err != nil {
		return breaker.Allowance{}, err
	}
	return f.Store.Allow(ctx, name, p, a)
}

func (f *flakyStore) Report(ctx context.Context, name string, p breaker.Policy, r breaker.PermitRef, o breaker.Outcome, d time.Duration) (breaker.Recorded, error) {
	if err := f.fail(); err != nil {
		return breaker.Recorded{}, err
	}
	return f.Store.Report(ctx, name, p, r, o, d)
}

func (f *flakyStore) Release(ctx context.Context, name string, p breaker.Policy, a breaker.AllowArgs) (bool, error) {
	if err := f.fail(); err != nil {
		return false, err
	}
	return f.Store.Release(ctx, name, p, a)
}

func (f *flakyStore) Get(ctx context.Context, name string, p breaker.Policy) (breaker.Snapshot, error) {
	if err := f.fail(); err != nil {
		return breaker.Snapshot{}, err
	}
	return f.Store.Get(ctx, name, p)
}

func (f *flakyStore) Reset(ctx context.Context, name string, p breaker.Policy) (breaker.Snapshot, error) {
	if err := f.fail(); err != nil {
		return breaker.Snapshot{}, err
	}
	return f.Store.Reset(ctx, name, p)
}

func (f *flakyStore) Ping(ctx context.Context) error { return f.fail() }

// TestSharedFallbackWhileStoreDown runs in a synctest bubble: the
// service's recovery loop waits only for time.
func TestSharedFallbackWhileStoreDown(t *testing.T) {
	synctest.Test(t, testSharedFallbackWhileStoreDown)
}

func testSharedFallbackWhileStoreDown(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock()
	mem := breaker.NewMemoryStore(clk.Now)
	fs := &flakyStore{Store: mem}
	pol := breaker.Policy{Scope: breaker.Shared, ConsecutiveFailures: 2, OpenDuration: time.Minute}
	s := newService(t, clk, map[string]breaker.Policy{"tripped": pol, "healthy": pol}, func(o *breaker.Options) {
		o.Shared = fs
		o.RecoveryInterval = 5 * time.Millisecond
	})

	for range 2 {
		d, err := s.Allow(ctx, "tripped", time.Minute)
		if err != nil || !d.Allowed || d.Degraded {
			t.Fatalf("Allow = %+v, %v", d, err)
		}
		if _, err := s.Report(ctx, d.PermitID, breaker.Failure, 0); err != nil {
			t.Fatal(err)
		}
	}
	if d, _ := s.Allow(ctx, "tripped", time.Minute); d.Allowed || d.State != breaker.Open {
		t.Fatalf("tripped breaker: %+v", d)
	}
	before, err := s.Allow(ctx, "healthy", time.Minute)
	if err != nil || !before.Allowed {
		t.Fatal(err)
	}

	fs.down.Store(true)
	// The fallback starts from the last state seen: still open.
	d, err := s.Allow(ctx, "tripped", time.Minute)
	if err != nil || d.Allowed || !d.Degraded || d.State != breaker.Open || d.RetryAfter != time.Minute {
		t.Fatalf("open shared breaker while the store is down: %+v, %v", d, err)
	}
	calls := fs.calls.Load()
	fb, err := s.Allow(ctx, "healthy", time.Minute)
	if err != nil || !fb.Allowed || !fb.Degraded {
		t.Fatalf("closed shared breaker while the store is down: %+v, %v; want allowed by the fallback", fb, err)
	}
	if fs.calls.Load() != calls {
		t.Error("a call went to the store although it is known to be down")
	}
	if r, err := s.Report(ctx, fb.PermitID, breaker.Success, 0); err != nil || !r.Counted || !r.Degraded {
		t.Fatalf("report of a fallback permit: %+v, %v", r, err)
	}
	// A permit issued by the store before the outage: kept for replay.
	if r, err := s.Report(ctx, before.PermitID, breaker.Success, 0); err != nil || r.Counted || !r.Degraded {
		t.Fatalf("report of a store permit while down: %+v, %v", r, err)
	}
	info, err := s.Get(ctx, "healthy")
	if err != nil || !info.Degraded {
		t.Fatalf("Get while down: %+v, %v", info, err)
	}
	if _, err := s.Reset(ctx, "healthy", "test"); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Reset while down: %v, want unavailable", err)
	}

	late, _ := s.Allow(ctx, "healthy", time.Minute)
	fs.down.Store(false)
	testkit.Eventually(t, 10*time.Second, "recovery", func() bool { return !s.Degraded() })
	// The kept report was replayed into the store.
	snap, _ := mem.Get(ctx, "healthy", pol)
	if snap.Counts.Calls != 1 || snap.Counts.OutstandingPermits != 0 {
		t.Fatalf("store after replay: %+v", snap.Counts)
	}
	// A fallback permit reported after recovery is stale, not an error.
	if r, err := s.Report(ctx, late.PermitID, breaker.Success, 0); err != nil || r.Counted {
		t.Fatalf("fallback permit after recovery: %+v, %v", r, err)
	}
	if d, err := s.Allow(ctx, "healthy", time.Minute); err != nil || d.Degraded || !d.Allowed {
		t.Fatalf("after recovery: %+v, %v", d, err)
	}
}
