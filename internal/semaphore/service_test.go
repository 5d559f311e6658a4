package semaphore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newService(t *testing.T, st semaphore.Store) *semaphore.Service {
	t.Helper()
	svc := semaphore.NewService(st, nil, nil)
	t.Cleanup(svc.Close)
	return svc
}

// redisStores returns n stores on one fresh Redis, like n sidecars.
func redisStores(t *testing.T, n int, opts ...semaphore.RedisOption) []*semaphore.RedisStore {
	t.Helper()
	rdb := testharness.StartRedis(t).Client(t)
	ns := namespaces()
	out := make([]*semaphore.RedisStore, n)
	for i := range out {
		out[i] = semaphore.NewRedisStore(rdb, ns, 2*time.Second, opts...)
	}
	return out
}

type acquired struct {
	r   semaphore.Result
	err error
}

func acquireAsync(ctx context.Context, svc *semaphore.Service, name string, opts semaphore.AcquireOptions) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		r, err := svc.Acquire(ctx, name, opts)
		ch <- acquired{r, err}
	}()
	return ch
}

func TestServiceWaitersAreServedInArrivalOrder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) semaphore.Store
	}{
		{"memory", func(*testing.T) semaphore.Store { return semaphore.NewMemoryStore(nil) }},
		{"redis", func(t *testing.T) semaphore.Store { return redisStores(t, 1)[0] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := newService(t, tc.store(t))
			ctx := ctxFor(t, time.Minute)
			holder, err := svc.Acquire(ctx, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute, Owner: "first"})
			if err != nil || !holder.Acquired {
				t.Fatalf("first Acquire = %+v, %v", holder, err)
			}
			const n = 5
			results := make([]<-chan acquired, n)
			for i := range n {
				results[i] = acquireAsync(ctx, svc, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute, Wait: time.Minute, Owner: fmt.Sprint("w", i)})
				testkit.Eventually(t, 10*time.Second, "waiter to queue", func() bool { return svc.Waiters("db") == i+1 })
			}
			// A caller that does not wait never jumps the line.
			if r, err := svc.Acquire(ctx, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute}); err != nil || r.Acquired {
				t.Fatalf("try while others wait = %+v, %v; want refused", r, err)
			}
			prev := holder.Permit
			for i := range n {
				if err := svc.Release(ctx, "db", prev.ID); err != nil {
					t.Fatalf("Release: %v", err)
				}
				var got acquired
				select {
				case got = <-results[i]:
				case <-ctx.Done():
					t.Fatalf("waiter %d not granted", i)
				}
				if got.err != nil || !got.r.Acquired || got.r.Permit.Owner != fmt.Sprint("w", i) {
					t.Fatalf("grant %d went to %+v, %v; want w%d", i, got.r, got.err, i)
				}
				if got.r.Permit.FencingToken <= prev.FencingToken {
					t.Fatalf("token %d not above %d", got.r.Permit.FencingToken, prev.FencingToken)
				}
				prev = got.r.Permit
			}
		})
	}
}

// Sidecars are served in the order they started waiting: the one that
// queued first gets the released permit even if the other is faster.
func TestRedisSidecarsAreServedInArrivalOrder(t *testing.T) {
	stores := redisStores(t, 2)
	a, b := newService(t, stores[0]), newService(t, stores[1])
	ctx := ctxFor(t, time.Minute)
	h, err := a.Acquire(ctx, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute})
	if err != nil || !h.Acquired {
		t.Fatalf("Acquire = %+v, %v", h, err)
	}
	opts := semaphore.AcquireOptions{Limit: 1, TTL: time.Minute, Wait: time.Minute}
	opts.Owner = "b"
	fromB := acquireAsync(ctx, b, "db", opts)
	testkit.EventuallyNil(t, 10*time.Second, "b queued", func() error {
		info, err := stores[0].Get(ctx, "db")
		if err == nil && info.Waiters != 1 {
			err = fmt.Errorf("waiters %d", info.Waiters)
		}
		return err
	})
	opts.Owner = "a"
	fromA := acquireAsync(ctx, a, "db", opts)
	testkit.Eventually(t, 10*time.Second, "a waiting", func() bool { return a.Waiters("db") == 1 })
	if err := a.Release(ctx, "db", h.Permit.ID); err != nil {
		t.Fatal(err)
	}
	got := <-fromB
	if got.err != nil || !got.r.Acquired {
		t.Fatalf("b = %+v, %v; want the permit", got.r, got.err)
	}
	select {
	case r := <-fromA:
		t.Fatalf("a was served before b released: %+v", r)
	default:
	}
	if err := b.Release(ctx, "db", got.r.Permit.ID); err != nil {
		t.Fatal(err)
	}
	if r := <-fromA; r.err != nil || !r.r.Acquired {
		t.Fatalf("a = %+v, %v", r.r, r.err)
	}
}

// A sidecar that died while first in line holds a free permit up for the
// grace only.
func TestRedisDeadSidecarInLineIsSkipped(t *testing.T) {
	stores := redisStores(t, 2, semaphore.WithGrace(300*time.Millisecond))
	dead, live := stores[0], newService(t, stores[1])
	ctx := ctxFor(t, time.Minute)
	h, err := dead.TryAcquire(ctx, "db", "held", "h", 1, time.Minute, nil)
	if err != nil || !h.Acquired {
		t.Fatalf("TryAcquire = %+v, %v", h, err)
	}
	// The dead sidecar queued for a minute and will never try again.
	if r, err := dead.TryAcquire(ctx, "db", "ghost", "ghost", 1, time.Minute, &semaphore.Queueing{Stay: time.Minute, Waiters: 1}); err != nil || r.Acquired {
		t.Fatalf("ghost = %+v, %v", r, err)
	}
	res := acquireAsync(ctx, live, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute, Wait: 30 * time.Second, Owner: "live"})
	testkit.Eventually(t, 10*time.Second, "live waiting", func() bool { return live.Waiters("db") == 1 })
	if err := dead.Release(ctx, "db", "held"); err != nil {
		t.Fatal(err)
	}
	got := <-res
	if got.err != nil || !got.r.Acquired || got.r.Permit.Owner != "live" {
		t.Fatalf("live = %+v, %v; want the permit once the dead sidecar's grace passed", got.r, got.err)
	}
}

func TestServiceRaisedLimitWakesWaiters(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stores func(t *testing.T) (semaphore.Store, semaphore.Store)
	}{
		{"memory", func(*testing.T) (semaphore.Store, semaphore.Store) {
			m := semaphore.NewMemoryStore(nil)
			return m, m
		}},
		{"redis", func(t *testing.T) (semaphore.Store, semaphore.Store) {
			s := redisStores(t, 2)
			return s[0], s[1]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s1, s2 := tc.stores(t)
			waiting, raising := newService(t, s1), newService(t, s2)
			ctx := ctxFor(t, time.Minute)
			if r, err := raising.Acquire(ctx, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute}); err != nil || !r.Acquired {
				t.Fatalf("Acquire = %+v, %v", r, err)
			}
			res := acquireAsync(ctx, waiting, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute, Wait: 50 * time.Second})
			// Waiting in Redis's line, not only in the sidecar's: the
			// waiter's first try carries its limit 1, and a try that
			// reached the store after the raise would rightly set it back
			// (the latest caller's limit applies).
			testkit.Eventually(t, 10*time.Second, "waiting", func() bool {
				if waiting.Waiters("db") != 1 {
					return false
				}
				if tc.name == "memory" { // keeps no line of its own; its try is in-process
					return true
				}
				info, err := s2.Get(ctx, "db")
				return err == nil && info.Waiters == 1
			})
			if r, err := raising.Acquire(ctx, "db", semaphore.AcquireOptions{Limit: 3, TTL: time.Minute}); err != nil || !r.Acquired || r.Limit != 3 {
				t.Fatalf("raising Acquire = %+v, %v", r, err)
			}
			// No permit was released and none expires for a minute: only
			// the raise can wake the waiter, which follows the new limit.
			got := <-res
			if got.err != nil || !got.r.Acquired {
				t.Fatalf("waiter = %+v, %v; want woken by the raised limit", got.r, got.err)
			}
		})
	}
}

func TestServiceNeverMoreThanLimitAcrossSidecars(t *testing.T) {
	const limit, sidecars, callers, rounds = 3, 3, 6, 15
	stores := redisStores(t, sidecars)
	ctx := ctxFor(t, 2*time.Minute)
	var inside, peak atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, sidecars*callers)
	for _, st := range stores {
		svc := newService(t, st)
		for c := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range rounds {
					r, err := svc.Acquire(ctx, "db", semaphore.AcquireOptions{Limit: limit, TTL: time.Minute, Wait: time.Minute, Owner: fmt.Sprint("c", c)})
					if err != nil || !r.Acquired {
						errs <- fmt.Errorf("acquire: %+v, %w", r, err)
						return
					}
					n := inside.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					time.Sleep(time.Millisecond) // real time: the work the bulkhead bounds
					inside.Add(-1)
					if err := svc.Release(ctx, "db", r.Permit.ID); err != nil {
						errs <- fmt.Errorf("release: %w", err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p := peak.Load(); p != limit {
		t.Fatalf("peak concurrent holders %d; want exactly the limit %d (more is a violation, fewer means the test proved nothing)", p, limit)
	}
}

// deadlineStore lets the caller's deadline pass while a grant is on its
// way: the grant completes in the store, the caller has given up.
type deadlineStore struct {
	semaphore.Store
	armed atomic.Bool
}

func (d *deadlineStore) TryAcquire(ctx context.Context, name, id, owner string, limit int, ttl time.Duration, q *semaphore.Queueing) (semaphore.Result, error) {
	if d.armed.Load() {
		<-ctx.Done()
		ctx = context.WithoutCancel(ctx)
	}
	return d.Store.TryAcquire(ctx, name, id, owner, limit, ttl, q)
}

func TestServiceHandsBackGrantWhoseDeadlinePassedMidCall(t *testing.T) {
	for _, wait := range []bool{false, true} {
		t.Run(fmt.Sprint("wait=", wait), func(t *testing.T) {
			mem := semaphore.NewMemoryStore(nil)
			st := &deadlineStore{Store: mem}
			svc := newService(t, st)
			bg := ctxFor(t, time.Minute)
			var holder semaphore.Result
			opts := semaphore.AcquireOptions{Limit: 1, TTL: time.Hour}
			if wait {
				var err error
				holder, err = svc.Acquire(bg, "db", opts)
				if err != nil || !holder.Acquired {
					t.Fatal(holder, err)
				}
				opts.Wait = time.Minute
			}
			ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
			defer cancel()
			res := acquireAsync(ctx, svc, "db", opts)
			if wait {
				testkit.Eventually(t, 10*time.Second, "waiting", func() bool { return svc.Waiters("db") == 1 })
			}
			st.armed.Store(true)
			if wait {
				if err := svc.Release(bg, "db", holder.Permit.ID); err != nil {
					t.Fatal(err)
				}
			}
			got := <-res
			if !errors.Is(got.err, context.DeadlineExceeded) || got.r.Acquired {
				t.Fatalf("Acquire = %+v, %v; want DeadlineExceeded and no permit", got.r, got.err)
			}
			info, err := mem.Get(bg, "db")
			if err != nil || info.Held != 0 {
				t.Fatalf("after the caller's deadline: %+v, %v; want the grant handed back", info, err)
			}
			if info.LastFencingToken == 0 || info.LastFencingToken == holder.Permit.FencingToken {
				t.Fatalf("last token %d: the store never granted to the late caller, so the test proved nothing", info.LastFencingToken)
			}
		})
	}
}

func TestSessionRenewsAndReleases(t *testing.T) {
	mem := semaphore.NewMemoryStore(nil)
	svc := newService(t, mem)
	ctx := ctxFor(t, time.Minute)
	se, r, err := svc.Hold(ctx, "db", semaphore.HoldOptions{AcquireOptions: semaphore.AcquireOptions{Limit: 1, TTL: 150 * time.Millisecond}})
	if err != nil || se == nil || !r.Acquired {
		t.Fatalf("Hold = %v, %+v, %v", se, r, err)
	}
	first := se.Permit().ExpireTime
	for range 3 {
		select {
		case <-se.Renewed():
		case <-ctx.Done():
			t.Fatal("no renewal")
		}
	}
	if !se.Permit().ExpireTime.After(first) {
		t.Fatal("expiry did not move")
	}
	if info, _ := mem.Get(ctx, "db"); info.Held != 1 {
		t.Fatalf("held %d after renewals past the TTL; want 1", info.Held)
	}
	if err := se.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := se.Release(ctx); err != nil {
		t.Fatalf("second Release = %v; want nil (idempotent)", err)
	}
	if info, _ := mem.Get(ctx, "db"); info.Held != 0 {
		t.Fatalf("held %d after Release", info.Held)
	}
}

func TestSessionEnds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxHold time.Duration
		steal   bool
		want    error
	}{
		{name: "permit released behind its back", steal: true, want: semaphore.ErrLeaseLost},
		{name: "max hold", maxHold: 200 * time.Millisecond, want: semaphore.ErrMaxHold},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := semaphore.NewMemoryStore(nil)
			svc := newService(t, mem)
			ctx := ctxFor(t, time.Minute)
			se, _, err := svc.Hold(ctx, "db", semaphore.HoldOptions{MaxHold: tc.maxHold,
				AcquireOptions: semaphore.AcquireOptions{Limit: 1, TTL: 300 * time.Millisecond}})
			if err != nil || se == nil {
				t.Fatal(se, err)
			}
			if tc.steal {
				if err := mem.Release(ctx, "db", se.Permit().ID); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-se.Done():
			case <-ctx.Done():
				t.Fatal("session did not end")
			}
			if !errors.Is(se.Err(), tc.want) {
				t.Fatalf("Err = %v; want %v", se.Err(), tc.want)
			}
			if info, _ := mem.Get(ctx, "db"); info.Held != 0 {
				t.Fatalf("held %d after the session ended", info.Held)
			}
			_ = se.Release(ctx)
		})
	}
}

func TestHoldAfterCloseFails(t *testing.T) {
	mem := semaphore.NewMemoryStore(nil)
	svc := semaphore.NewService(mem, nil, nil)
	svc.Close()
	ctx := ctxFor(t, time.Minute)
	if _, _, err := svc.Hold(ctx, "db", semaphore.HoldOptions{AcquireOptions: semaphore.AcquireOptions{Limit: 1, TTL: time.Minute}}); !errors.Is(err, semaphore.ErrShutdown) {
		t.Fatalf("Hold after Close = %v; want ErrShutdown", err)
	}
	if info, _ := mem.Get(ctx, "db"); info.Held != 0 {
		t.Fatalf("held %d: the grant was not given back", info.Held)
	}
}

// A caller that joins the line with another limit sets it for everyone at
// once: the callers already waiting follow it.
func TestServiceLimitOfALaterCallerAppliesToTheLine(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) semaphore.Store
	}{
		{"memory", func(*testing.T) semaphore.Store { return semaphore.NewMemoryStore(nil) }},
		{"redis", func(t *testing.T) semaphore.Store { return redisStores(t, 1)[0] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := newService(t, tc.store(t))
			ctx := ctxFor(t, time.Minute)
			if r, err := svc.Acquire(ctx, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute}); err != nil || !r.Acquired {
				t.Fatalf("Acquire = %+v, %v", r, err)
			}
			old := acquireAsync(ctx, svc, "db", semaphore.AcquireOptions{Limit: 1, TTL: time.Minute, Wait: 50 * time.Second, Owner: "old"})
			testkit.Eventually(t, 10*time.Second, "old waiting", func() bool { return svc.Waiters("db") == 1 })
			// Nothing is released and nothing expires: only the new limit
			// lets both in.
			newer := acquireAsync(ctx, svc, "db", semaphore.AcquireOptions{Limit: 3, TTL: time.Minute, Wait: 50 * time.Second, Owner: "new"})
			for _, ch := range []<-chan acquired{old, newer} {
				if got := <-ch; got.err != nil || !got.r.Acquired || got.r.Limit != 3 {
					t.Fatalf("got %+v, %v; want a permit under the limit 3", got.r, got.err)
				}
			}
			info, err := svc.Get(ctx, "db")
			if err != nil || info.Held != 3 || info.Limit != 3 {
				t.Fatalf("Get = %+v, %v; want 3 of 3 held", info, err)
			}
		})
	}
}
