package lock_test

// Tests of Service (waiting, cleanup of abandoned grants) and Session
// (renewal, loss, release). Identifiers carry an "svc" prefix so that they
// cannot collide with the conformance suite in store_test.go.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// svcEventTimeout bounds every wait for an event that should happen
// promptly; it is a safety net against hangs, not a timing assertion.
const svcEventTimeout = 10 * time.Second

// svcSpyStore wraps a Store and reports when a caller is parked in
// Service.Acquire's wait: it subscribed with WatchRelease and the try after
// that found the lock taken. Hooks, when set, run before delegating.
type svcSpyStore struct {
	lock.Store

	waiting chan struct{} // buffered 1: a waiter is parked
	mu      sync.Mutex
	watched bool

	tryHook   func(ctx context.Context) context.Context
	renewHook func() error
}

func newSvcSpyStore(inner lock.Store) *svcSpyStore {
	return &svcSpyStore{Store: inner, waiting: make(chan struct{}, 1)}
}

func (s *svcSpyStore) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (lock.Lease, lock.Holder, bool, error) {
	if s.tryHook != nil {
		ctx = s.tryHook(ctx)
	}
	lease, holder, ok, err := s.Store.TryAcquire(ctx, key, leaseID, owner, ttl)
	s.mu.Lock()
	watched := s.watched
	s.mu.Unlock()
	if watched && err == nil && !ok {
		select {
		case s.waiting <- struct{}{}:
		default:
		}
	}
	return lease, holder, ok, err
}

func (s *svcSpyStore) WatchRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	s.mu.Lock()
	s.watched = true
	s.mu.Unlock()
	return s.Store.WatchRelease(ctx, key)
}

func (s *svcSpyStore) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (time.Time, error) {
	if s.renewHook != nil {
		if err := s.renewHook(); err != nil {
			return time.Time{}, err
		}
	}
	return s.Store.Renew(ctx, key, leaseID, ttl)
}

func svcCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), svcEventTimeout)
	t.Cleanup(cancel)
	return ctx
}

func svcWait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(svcEventTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func svcMustAcquire(t *testing.T, svc *lock.Service, key string, opts lock.AcquireOptions) lock.Lease {
	t.Helper()
	lease, holder, ok, err := svc.Acquire(svcCtx(t), key, opts)
	if err != nil || !ok {
		t.Fatalf("Acquire(%q) = ok %v, holder %+v, err %v; want acquired", key, ok, holder, err)
	}
	return lease
}

func svcInfo(t *testing.T, st lock.Store, key string) lock.Info {
	t.Helper()
	info, err := st.Get(svcCtx(t), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return info
}

type svcAcquireResult struct {
	lease  lock.Lease
	holder lock.Holder
	ok     bool
	err    error
}

func svcAcquireAsync(ctx context.Context, svc *lock.Service, key string, opts lock.AcquireOptions) <-chan svcAcquireResult {
	res := make(chan svcAcquireResult, 1)
	go func() {
		lease, holder, ok, err := svc.Acquire(ctx, key, opts)
		res <- svcAcquireResult{lease, holder, ok, err}
	}()
	return res
}

func svcResult(t *testing.T, res <-chan svcAcquireResult) svcAcquireResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(svcEventTimeout):
		t.Fatal("timed out waiting for Acquire to return")
		return svcAcquireResult{}
	}
}

func TestServiceAcquireWaitIsWokenByRelease(t *testing.T) {
	spy := newSvcSpyStore(lock.NewMemoryStore(nil)) // real time
	svc := lock.NewService(spy, nil, nil)
	const key = "orders/42"
	holder := svcMustAcquire(t, svc, key, lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})

	// The waiter's own timeout and the holder's TTL are far beyond the
	// test's bound: only the release can let it in before svcEventTimeout.
	res := svcAcquireAsync(svcCtx(t), svc, key, lock.AcquireOptions{TTL: time.Minute, Wait: time.Minute, Owner: "waiter"})
	svcWait(t, spy.waiting, "the waiter to park")
	if err := svc.Release(svcCtx(t), key, holder.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	r := svcResult(t, res)
	if r.err != nil || !r.ok {
		t.Fatalf("waiter: ok %v err %v; want acquired after the release", r.ok, r.err)
	}
	if r.lease.Owner != "waiter" || r.lease.FencingToken <= holder.FencingToken {
		t.Fatalf("waiter lease %+v; want owner waiter and a token > %d", r.lease, holder.FencingToken)
	}
	if info := svcInfo(t, spy, key); !info.Held || info.Holder.FencingToken != r.lease.FencingToken {
		t.Fatalf("Get after grant = %+v; want held by the waiter", info)
	}
}

func TestServiceAcquireWaitEndsAtTimeoutWithHolder(t *testing.T) {
	svc := lock.NewService(lock.NewMemoryStore(nil), nil, nil)
	const key = "k"
	held := svcMustAcquire(t, svc, key, lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})

	lease, holder, ok, err := svc.Acquire(svcCtx(t), key, lock.AcquireOptions{TTL: time.Second, Wait: 200 * time.Millisecond, Owner: "waiter"})
	if err != nil || ok {
		t.Fatalf("Acquire = ok %v err %v; want not acquired, no error", ok, err)
	}
	if lease != (lock.Lease{}) {
		t.Errorf("lease = %+v; want zero when not acquired", lease)
	}
	if holder.Owner != "holder" || holder.FencingToken != held.FencingToken || !holder.ExpireTime.Equal(held.ExpireTime) {
		t.Errorf("holder = %+v; want the current holder %+v", holder, held)
	}
}

func TestServiceAcquireWaitHonoursCancel(t *testing.T) {
	spy := newSvcSpyStore(lock.NewMemoryStore(nil))
	svc := lock.NewService(spy, nil, nil)
	svcMustAcquire(t, svc, "k", lock.AcquireOptions{TTL: time.Hour})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := svcAcquireAsync(ctx, svc, "k", lock.AcquireOptions{TTL: time.Second, Wait: time.Minute})
	svcWait(t, spy.waiting, "the waiter to park")
	cancel()
	if r := svcResult(t, res); !errors.Is(r.err, context.Canceled) || r.ok {
		t.Fatalf("Acquire after cancel = ok %v err %v; want context.Canceled", r.ok, r.err)
	}
}

func TestServiceAcquireReleasesGrantToCancelledCaller(t *testing.T) {
	for _, tc := range []struct {
		name string
		wait bool // grant inside the wait loop rather than on the first try
	}{
		{name: "first try"},
		{name: "after waiting", wait: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := lock.NewMemoryStore(nil)
			spy := newSvcSpyStore(mem)
			svc := lock.NewService(spy, nil, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var armed sync.Mutex
			arm := false
			// The caller gives up while the store is granting: the store
			// completes the grant (it had already started), and the
			// caller's context is cancelled by the time the answer is back.
			spy.tryHook = func(c context.Context) context.Context {
				armed.Lock()
				defer armed.Unlock()
				if !arm {
					return c
				}
				cancel()
				return context.WithoutCancel(c)
			}
			opts := lock.AcquireOptions{TTL: time.Hour}
			var holder lock.Lease
			if tc.wait {
				holder = svcMustAcquire(t, svc, "k", lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})
				opts.Wait = time.Minute
			} else {
				arm = true
			}
			res := svcAcquireAsync(ctx, svc, "k", opts)
			if tc.wait {
				svcWait(t, spy.waiting, "the waiter to park")
				armed.Lock()
				arm = true
				armed.Unlock()
				if err := svc.Release(svcCtx(t), "k", holder.LeaseID); err != nil {
					t.Fatalf("Release: %v", err)
				}
			}
			r := svcResult(t, res)
			if !errors.Is(r.err, context.Canceled) || r.ok || r.lease != (lock.Lease{}) {
				t.Fatalf("Acquire = lease %+v ok %v err %v; want context.Canceled and no lease", r.lease, r.ok, r.err)
			}
			info := svcInfo(t, mem, "k")
			if info.Held {
				t.Fatalf("lock still held by %+v after the grant to a cancelled caller", info.Holder)
			}
			if info.LastFencingToken == 0 || info.LastFencingToken == holder.FencingToken {
				t.Fatalf("LastFencingToken = %d: the store never granted to the cancelled caller, so the test proved nothing", info.LastFencingToken)
			}
		})
	}
}

func TestSessionReleaseIsIdempotent(t *testing.T) {
	mem := lock.NewMemoryStore(nil)
	svc := lock.NewService(mem, nil, nil)
	sess, _, ok, err := svc.Hold(svcCtx(t), "k", lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: time.Hour, Owner: "o"}})
	if err != nil || !ok || sess == nil {
		t.Fatalf("Hold = ok %v err %v", ok, err)
	}
	if info := svcInfo(t, mem, "k"); !info.Held || info.Holder.FencingToken != sess.Lease().FencingToken {
		t.Fatalf("Get after Hold = %+v; want held by the session", info)
	}
	for i := range 3 {
		if err := sess.Release(svcCtx(t)); err != nil {
			t.Fatalf("Release #%d: %v", i+1, err)
		}
	}
	if info := svcInfo(t, mem, "k"); info.Held {
		t.Fatalf("lock held after Release: %+v", info)
	}
	if err := sess.Err(); err != nil {
		t.Fatalf("Err after an explicit Release = %v; want nil (the session did not end by itself)", err)
	}
	select {
	case <-sess.Done():
		t.Fatal("Done closed by an explicit Release; it is only for sessions ending by themselves")
	default:
	}
}

func TestSessionNotAcquired(t *testing.T) {
	mem := lock.NewMemoryStore(nil)
	svc := lock.NewService(mem, nil, nil)
	held := svcMustAcquire(t, svc, "k", lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})
	sess, holder, ok, err := svc.Hold(svcCtx(t), "k", lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: time.Second}})
	if err != nil || ok || sess != nil {
		t.Fatalf("Hold on a held lock = sess %v ok %v err %v; want nil session, not acquired", sess, ok, err)
	}
	if holder.FencingToken != held.FencingToken || holder.Owner != "holder" {
		t.Fatalf("holder = %+v; want %+v", holder, held)
	}
}

// The session tests below run in synctest bubbles: on a memory store, a
// session waits for nothing but its renewal and max-hold timers.
func TestSessionRenewsLease(t *testing.T) { synctest.Test(t, testSessionRenewsLease) }

func testSessionRenewsLease(t *testing.T) {
	clk := testkit.NewClock()
	mem := lock.NewMemoryStore(clk.Now)
	svc := lock.NewService(mem, nil, nil)
	const ttl = 150 * time.Millisecond
	sess, _, ok, err := svc.Hold(svcCtx(t), "k", lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: ttl}})
	if err != nil || !ok {
		t.Fatalf("Hold = ok %v err %v", ok, err)
	}
	t.Cleanup(func() { _ = sess.Release(context.Background()) })
	first := sess.Lease()
	for i := range 3 {
		// Each renewal extends the lease from the store's now.
		clk.Advance(ttl / 2)
		select {
		case exp := <-sess.Renewed():
			if want := clk.Now().Add(ttl); exp.After(want) {
				t.Fatalf("renewal #%d expiry %v after store now+ttl %v", i+1, exp, want)
			}
		case <-sess.Done():
			t.Fatalf("session ended: %v", sess.Err())
		case <-time.After(svcEventTimeout):
			t.Fatalf("no renewal #%d", i+1)
		}
	}
	info := svcInfo(t, mem, "k")
	if !info.Held || info.Holder.FencingToken != first.FencingToken {
		t.Fatalf("after renewals Get = %+v; want held with token %d", info, first.FencingToken)
	}
	if !sess.Lease().ExpireTime.After(first.ExpireTime) {
		t.Fatalf("Lease().ExpireTime = %v; want later than the first %v", sess.Lease().ExpireTime, first.ExpireTime)
	}
}

func TestSessionLeaseStolenEndsWithLeaseLost(t *testing.T) {
	synctest.Test(t, testSessionLeaseStolenEndsWithLeaseLost)
}

func testSessionLeaseStolenEndsWithLeaseLost(t *testing.T) {
	clk := testkit.NewClock()
	mem := lock.NewMemoryStore(clk.Now)
	svc := lock.NewService(mem, nil, nil)
	const ttl = 300 * time.Millisecond // real renewal every ~100ms
	sess, _, ok, err := svc.Hold(svcCtx(t), "k", lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: ttl, Owner: "victim"}})
	if err != nil || !ok {
		t.Fatalf("Hold = ok %v err %v", ok, err)
	}
	// Store time passes the lease's expiry (a pause, a partition) and
	// another lease takes the lock before the next renewal.
	clk.Advance(time.Hour)
	thief := svcMustAcquire(t, svc, "k", lock.AcquireOptions{TTL: time.Hour, Owner: "thief"})
	if thief.FencingToken <= sess.Lease().FencingToken {
		t.Fatalf("thief token %d not above the victim's %d", thief.FencingToken, sess.Lease().FencingToken)
	}

	svcWait(t, sess.Done(), "the session to end")
	if err := sess.Err(); !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Err = %v; want ErrLeaseLost", err)
	}
	if err := sess.Release(svcCtx(t)); !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Release after loss = %v; want ErrLeaseLost", err)
	}
	if info := svcInfo(t, mem, "k"); !info.Held || info.Holder.FencingToken != thief.FencingToken {
		t.Fatalf("Get = %+v; the lost session's Release must not free the thief's lock", info)
	}
}

func TestSessionStoreUnavailableUntilExpiryEndsWithLeaseLost(t *testing.T) {
	synctest.Test(t, testSessionStoreUnavailableUntilExpiryEndsWithLeaseLost)
}

func testSessionStoreUnavailableUntilExpiryEndsWithLeaseLost(t *testing.T) {
	spy := newSvcSpyStore(lock.NewMemoryStore(nil))
	var mu sync.Mutex
	renewCalls := 0
	spy.renewHook = func() error {
		mu.Lock()
		renewCalls++
		mu.Unlock()
		return store.Unavailable(errors.New("boom"))
	}
	svc := lock.NewService(spy, nil, nil)
	sess, _, ok, err := svc.Hold(svcCtx(t), "k", lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: 300 * time.Millisecond}})
	if err != nil || !ok {
		t.Fatalf("Hold = ok %v err %v", ok, err)
	}
	svcWait(t, sess.Done(), "the session to end")
	err = sess.Err()
	if !errors.Is(err, lock.ErrLeaseLost) || !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Err = %v; want ErrLeaseLost wrapping store.ErrUnavailable", err)
	}
	mu.Lock()
	calls := renewCalls
	mu.Unlock()
	if calls < 2 {
		t.Errorf("Renew tried %d times; want retries before giving up", calls)
	}
	select {
	case exp := <-sess.Renewed():
		t.Errorf("Renewed delivered %v although every renewal failed", exp)
	default:
	}
	if err := sess.Release(svcCtx(t)); !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Release after loss = %v; want ErrLeaseLost", err)
	}
}

func TestSessionMaxHoldReleasesLock(t *testing.T) { synctest.Test(t, testSessionMaxHoldReleasesLock) }

func testSessionMaxHoldReleasesLock(t *testing.T) {
	mem := lock.NewMemoryStore(nil)
	svc := lock.NewService(mem, nil, nil)
	sess, _, ok, err := svc.Hold(svcCtx(t), "k", lock.HoldOptions{
		AcquireOptions: lock.AcquireOptions{TTL: time.Hour},
		MaxHold:        150 * time.Millisecond,
	})
	if err != nil || !ok {
		t.Fatalf("Hold = ok %v err %v", ok, err)
	}
	svcWait(t, sess.Done(), "max_hold to end the session")
	if err := sess.Err(); !errors.Is(err, lock.ErrMaxHold) {
		t.Fatalf("Err = %v; want ErrMaxHold", err)
	}
	if info := svcInfo(t, mem, "k"); info.Held {
		t.Fatalf("lock still held after max_hold: %+v", info)
	}
	if err := sess.Release(svcCtx(t)); err != nil {
		t.Fatalf("Release after max_hold = %v; want nil (the sidecar released it)", err)
	}
}
