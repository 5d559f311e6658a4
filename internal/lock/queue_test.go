package lock_test

// Tests of the wait queues: local FIFO per Service, the sidecar queue in
// Redis, the cost of a release with many waiters, and the cleanup of
// cancelled and crashed waiters. Identifiers carry a "q" prefix.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// qCountingMemory counts the acquisition attempts on a memory store.
type qCountingMemory struct {
	*lock.MemoryStore
	tries atomic.Int64
}

func (c *qCountingMemory) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (lock.Lease, lock.Holder, bool, error) {
	c.tries.Add(1)
	return c.MemoryStore.TryAcquire(ctx, key, leaseID, owner, ttl)
}

// qCountingRedis counts the acquisition attempts (acquire scripts) on a
// Redis store, keeping its wait queue and batch renewal.
type qCountingRedis struct {
	*lock.RedisStore
	tries *atomic.Int64
}

func (c qCountingRedis) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (lock.Lease, lock.Holder, bool, error) {
	c.tries.Add(1)
	return c.RedisStore.TryAcquire(ctx, key, leaseID, owner, ttl)
}

func (c qCountingRedis) TryAcquireQueued(ctx context.Context, key, leaseID, owner string, ttl time.Duration, more bool, stay time.Duration) (lock.Lease, lock.Holder, bool, time.Time, error) {
	c.tries.Add(1)
	return c.RedisStore.TryAcquireQueued(ctx, key, leaseID, owner, ttl, more, stay)
}

// qQueue reads the sidecar queue of key in Redis, head first.
func qQueue(t *testing.T, rdb redis.UniversalClient, ns, key string) []string {
	t.Helper()
	ids, err := rdb.ZRange(context.Background(), redisx.Key(ns, redisx.Lock, key, "lock:queue"), 0, -1).Result()
	if err != nil {
		t.Fatalf("ZRANGE queue: %v", err)
	}
	return ids
}

// qHerd has n callers spread over svcs wait for one key held by an
// outsider, who then releases; every caller that gets the lock releases it
// at once. It checks exclusion and token order, and returns the number of
// releases (one per grant).
func qHerd(t *testing.T, holder *lock.Service, svcs []*lock.Service, n int, before func()) int {
	t.Helper()
	ctx := svcCtx(t)
	const key = "herd"
	held := svcMustAcquire(t, holder, key, lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})
	var (
		mu     sync.Mutex
		inside bool
		last   = held.FencingToken
		wg     sync.WaitGroup
	)
	for i := range n {
		svc := svcs[i%len(svcs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			lease, _, ok, err := svc.Acquire(ctx, key, lock.AcquireOptions{TTL: time.Minute, Wait: time.Minute, Owner: fmt.Sprint(i)})
			if err != nil || !ok {
				t.Errorf("waiter %d: ok %v err %v", i, ok, err)
				return
			}
			mu.Lock()
			if inside || lease.FencingToken <= last {
				t.Errorf("waiter %d: token %d after %d, inside %v: exclusion broken", i, lease.FencingToken, last, inside)
			}
			inside, last = true, lease.FencingToken
			mu.Unlock()
			mu.Lock()
			inside = false
			mu.Unlock()
			if err := svc.Release(ctx, key, lease.LeaseID); err != nil {
				t.Errorf("waiter %d release: %v", i, err)
			}
		}()
	}
	testkit.Eventually(t, svcEventTimeout, "every caller to queue", func() bool {
		total := 0
		for _, s := range svcs {
			total += s.Waiters(key)
		}
		return total == n
	})
	before()
	if err := holder.Release(ctx, key, held.LeaseID); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, s := range svcs {
		if w := s.Waiters(key); w != 0 {
			t.Errorf("service %d still has %d waiters", i, w)
		}
	}
	return n + 1
}

func TestQueueOneReleaseWakesOneWaiterMemory(t *testing.T) {
	st := &qCountingMemory{MemoryStore: lock.NewMemoryStore(nil)}
	svc := lock.NewService(st, nil, nil)
	defer svc.Close()
	const n = 1000
	var base int64
	releases := qHerd(t, svc, []*lock.Service{svc}, n, func() { base = st.tries.Load() })
	tries := st.tries.Load() - base
	t.Logf("%d waiters, %d releases: %d attempts (%.2f per release)", n, releases, tries, float64(tries)/float64(releases))
	// One try by the head per release; a head that inherits the wait
	// tries only when woken.
	if tries > int64(2*releases) {
		t.Fatalf("%d attempts for %d releases; want at most 2 per release", tries, releases)
	}
}

func TestQueueOneReleaseWakesOneWaiterPerSidecarRedis(t *testing.T) {
	rd := testharness.StartRedis(t)
	rdb := rd.Client(t)
	var tries atomic.Int64
	// Three sidecars on one Redis; a head's grace outlives the test, so no
	// timer adds attempts and the count depends only on the releases.
	var svcs []*lock.Service
	for i := range 3 {
		st := qCountingRedis{RedisStore: lock.NewRedisStore(rdb, "herd", 5*time.Second,
			lock.WithInstanceID(fmt.Sprintf("sidecar-%d", i)), lock.WithGrace(time.Hour)), tries: &tries}
		svc := lock.NewService(st, nil, nil)
		t.Cleanup(svc.Close)
		svcs = append(svcs, svc)
	}
	const n = 999
	var base int64
	releases := qHerd(t, svcs[0], svcs, n, func() {
		testkit.Eventually(t, svcEventTimeout, "all three sidecars to queue", func() bool { return len(qQueue(t, rdb, "herd", "herd")) == 3 })
		base = tries.Load()
	})
	got := tries.Load() - base
	t.Logf("%d waiters on 3 sidecars, %d releases: %d attempts (%.2f per release)", n, releases, got, float64(got)/float64(releases))
	// Per release: at most one try per sidecar with waiters when the
	// release is announced, and one more each when the grant to the queue's
	// head is announced to sidecars that were refused in between.
	if limit := int64((2*len(svcs) + 1) * releases); got > limit {
		t.Fatalf("%d attempts for %d releases; want at most %d (2 per sidecar + 1 per release)", got, releases, limit)
	}
	if q := qQueue(t, rdb, "herd", "herd"); len(q) != 0 {
		t.Fatalf("queue left behind: %v", q)
	}
}

func TestQueueLocalWaitersAreServedInArrivalOrder(t *testing.T) {
	svc := lock.NewService(lock.NewMemoryStore(nil), nil, nil)
	defer svc.Close()
	ctx := svcCtx(t)
	held := svcMustAcquire(t, svc, "k", lock.AcquireOptions{TTL: time.Hour})
	const n = 20
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lease, _, ok, err := svc.Acquire(ctx, "k", lock.AcquireOptions{TTL: time.Hour, Wait: time.Minute})
			if err != nil || !ok {
				t.Errorf("waiter %d: %v %v", i, ok, err)
				return
			}
			order <- i
			if err := svc.Release(ctx, "k", lease.LeaseID); err != nil {
				t.Error(err)
			}
		}()
		testkit.Eventually(t, svcEventTimeout, "the waiter to queue", func() bool { return svc.Waiters("k") == i+1 })
	}
	if err := svc.Release(ctx, "k", held.LeaseID); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d got the lock at turn %d", got, want)
		}
		want++
	}
}

func TestQueueTryLockDoesNotJumpWaiters(t *testing.T) {
	spy := newSvcSpyStore(lock.NewMemoryStore(nil))
	svc := lock.NewService(spy, nil, nil)
	defer svc.Close()
	ctx := svcCtx(t)
	held := svcMustAcquire(t, svc, "k", lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})
	res := svcAcquireAsync(ctx, svc, "k", lock.AcquireOptions{TTL: time.Hour, Wait: time.Minute, Owner: "waiter"})
	svcWait(t, spy.waiting, "the waiter to park")
	_, h, ok, err := svc.Acquire(ctx, "k", lock.AcquireOptions{TTL: time.Hour, Owner: "barger"})
	if err != nil || ok || h.Owner != "holder" {
		t.Fatalf("try-lock with a waiter queued = ok %v holder %+v err %v; want refused, holder shown", ok, h, err)
	}
	if err := svc.Release(ctx, "k", held.LeaseID); err != nil {
		t.Fatal(err)
	}
	if r := svcResult(t, res); !r.ok || r.lease.Owner != "waiter" {
		t.Fatalf("waiter = %+v; want it granted", r)
	}
}

// qSidecars starts n services on one Redis, as n sidecars would be.
func qSidecars(t *testing.T, rdb redis.UniversalClient, ns string, n int, opts ...lock.RedisOption) []*lock.Service {
	t.Helper()
	var out []*lock.Service
	for i := range n {
		st := lock.NewRedisStore(rdb, ns, 5*time.Second, append([]lock.RedisOption{lock.WithInstanceID(fmt.Sprintf("sc-%d", i))}, opts...)...)
		svc := lock.NewService(st, nil, nil)
		t.Cleanup(svc.Close)
		out = append(out, svc)
	}
	return out
}

func TestQueueLockPassesToTheSidecarThatWaitedFirst(t *testing.T) {
	rdb := testharness.StartRedis(t).Client(t)
	scs := qSidecars(t, rdb, "fifo", 2)
	a, b := scs[0], scs[1]
	ctx := svcCtx(t)
	held := svcMustAcquire(t, a, "k", lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})
	fromB := svcAcquireAsync(ctx, b, "k", lock.AcquireOptions{TTL: time.Hour, Wait: time.Minute, Owner: "b"})
	testkit.Eventually(t, svcEventTimeout, "b to queue", func() bool { return len(qQueue(t, rdb, "fifo", "k")) == 1 })
	fromA := svcAcquireAsync(ctx, a, "k", lock.AcquireOptions{TTL: time.Hour, Wait: time.Minute, Owner: "a"})
	testkit.Eventually(t, svcEventTimeout, "a to queue behind b", func() bool { return len(qQueue(t, rdb, "fifo", "k")) == 2 })
	if q := qQueue(t, rdb, "fifo", "k"); q[0] != "sc-1" || q[1] != "sc-0" {
		t.Fatalf("queue = %v; want [sc-1 sc-0]", q)
	}
	if err := a.Release(ctx, "k", held.LeaseID); err != nil {
		t.Fatal(err)
	}
	rb := svcResult(t, fromB)
	if rb.err != nil || !rb.ok {
		t.Fatalf("b = %+v; want the lock", rb)
	}
	select {
	case ra := <-fromA:
		t.Fatalf("a returned %+v while b holds the lock", ra)
	default:
	}
	if err := b.Release(ctx, "k", rb.lease.LeaseID); err != nil {
		t.Fatal(err)
	}
	ra := svcResult(t, fromA)
	if ra.err != nil || !ra.ok || ra.lease.FencingToken <= rb.lease.FencingToken {
		t.Fatalf("a = %+v; want the lock after b (token > %d)", ra, rb.lease.FencingToken)
	}
	if q := qQueue(t, rdb, "fifo", "k"); len(q) != 0 {
		t.Fatalf("queue left behind: %v", q)
	}
}

func TestQueueCrashedSidecarIsSkipped(t *testing.T) {
	rdb := testharness.StartRedis(t).Client(t)
	ctx := svcCtx(t)
	// A sidecar queued first, for an hour, and then died: it never takes
	// the lock kept for it, so the live one takes it after the grace.
	dead := lock.NewRedisStore(rdb, "crash", 5*time.Second, lock.WithInstanceID("dead"))
	live := qSidecars(t, rdb, "crash", 1, lock.WithGrace(300*time.Millisecond))[0]
	held := svcMustAcquire(t, live, "k", lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})
	if _, _, ok, _, err := dead.TryAcquireQueued(ctx, "k", "dead-lease", "dead", time.Hour, false, time.Hour); err != nil || ok {
		t.Fatalf("dead sidecar's try = %v %v; want queued", ok, err)
	}
	res := svcAcquireAsync(ctx, live, "k", lock.AcquireOptions{TTL: time.Hour, Wait: time.Minute, Owner: "live"})
	testkit.Eventually(t, svcEventTimeout, "the live sidecar to queue behind the dead one", func() bool { return len(qQueue(t, rdb, "crash", "k")) == 2 })
	if err := live.Release(ctx, "k", held.LeaseID); err != nil {
		t.Fatal(err)
	}
	r := svcResult(t, res)
	if r.err != nil || !r.ok {
		t.Fatalf("live waiter = %+v; want the lock once the dead entry expired", r)
	}
	if q := qQueue(t, rdb, "crash", "k"); len(q) != 0 {
		t.Fatalf("queue = %v; want the dead entry purged", q)
	}
}

func TestQueueCancelledWaitersLeaveNothing(t *testing.T) {
	rdb := testharness.StartRedis(t).Client(t)
	scs := qSidecars(t, rdb, "cancel", 2)
	ctx := svcCtx(t)
	held := svcMustAcquire(t, scs[0], "k", lock.AcquireOptions{TTL: time.Hour, Owner: "holder"})
	leaks := goleak.IgnoreCurrent()

	wctx, cancel := context.WithCancel(ctx)
	var results []<-chan svcAcquireResult
	for i := range 20 {
		results = append(results, svcAcquireAsync(wctx, scs[i%2], "k", lock.AcquireOptions{TTL: time.Hour, Wait: time.Minute}))
	}
	testkit.Eventually(t, svcEventTimeout, "both sidecars to queue", func() bool {
		return len(qQueue(t, rdb, "cancel", "k")) == 2 && scs[0].Waiters("k")+scs[1].Waiters("k") == 20
	})
	cancel()
	for _, res := range results {
		if r := svcResult(t, res); !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled waiter = %+v; want context.Canceled", r)
		}
	}
	if q := qQueue(t, rdb, "cancel", "k"); len(q) != 0 {
		t.Fatalf("queue = %v after every waiter was cancelled", q)
	}
	for i, s := range scs {
		if w := s.Waiters("k"); w != 0 {
			t.Fatalf("service %d: %d waiters after cancel", i, w)
		}
	}
	goleak.VerifyNone(t, leaks)
	// The lock is untouched, and a new waiter is not held up.
	if err := scs[0].Release(ctx, "k", held.LeaseID); err != nil {
		t.Fatal(err)
	}
	svcMustAcquire(t, scs[1], "k", lock.AcquireOptions{TTL: time.Hour, Wait: time.Minute})
}
