package lock_test

// Tests of batched session renewal. Identifiers carry an "rn" prefix.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// rnRenewCounter counts the renew scripts Redis receives and the round
// trips (pipelines or single calls) that carry them. A renew call is
// EVALSHA/EVAL with one key and three arguments (lease, ttl, retention).
type rnRenewCounter struct {
	renewals atomic.Int64
	trips    atomic.Int64
}

func rnIsRenew(c redis.Cmder) bool {
	a := c.Args()
	if len(a) != 7 {
		return false
	}
	name, _ := a[0].(string)
	return name == "evalsha" || name == "eval"
}

func (r *rnRenewCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *rnRenewCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, c redis.Cmder) error {
		if rnIsRenew(c) {
			r.renewals.Add(1)
			r.trips.Add(1)
		}
		return next(ctx, c)
	}
}
func (r *rnRenewCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		n := 0
		for _, c := range cmds {
			if rnIsRenew(c) {
				n++
			}
		}
		if n > 0 {
			r.renewals.Add(int64(n))
			r.trips.Add(1)
		}
		return next(ctx, cmds)
	}
}

func TestSessionsRenewInBatchesRedis(t *testing.T) {
	rd := testharness.StartRedis(t)
	rdb := rd.Client(t)
	counter := &rnRenewCounter{}
	rdb.AddHook(counter)
	st := lock.NewRedisStore(rdb, "batch", 5*time.Second)
	svc := lock.NewService(st, nil, nil)
	defer svc.Close()
	ctx := svcCtx(t)
	goroutines := runtime.NumGoroutine()

	const n = 1000
	const ttl = 2 * time.Second // renewed about every 667ms
	sessions := make([]*lock.Session, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, _, ok, err := svc.Hold(ctx, fmt.Sprintf("k%d", i), lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: ttl}})
			if err != nil || !ok {
				t.Errorf("Hold %d: %v %v", i, ok, err)
				return
			}
			sessions[i] = sess
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if extra := runtime.NumGoroutine() - goroutines; extra > 10 {
		t.Errorf("%d sessions added %d goroutines; want a few for the whole service", n, extra)
	}
	first := make([]time.Time, n)
	for i, s := range sessions {
		first[i] = s.Lease().ExpireTime
	}
	// Every session renewed at least three times, i.e. held across more
	// than one TTL after its grant.
	testkit.Eventually(t, svcEventTimeout, "three renewals of every session", func() bool {
		for i, s := range sessions {
			select {
			case <-s.Done():
				t.Fatalf("session %d ended: %v", i, s.Err())
			default:
			}
			if s.Lease().ExpireTime.Sub(first[i]) < ttl {
				return false
			}
		}
		return true
	})
	renewals, trips := counter.renewals.Load(), counter.trips.Load()
	t.Logf("%d sessions: %d renewals in %d round trips (%.0f per round trip)", n, renewals, trips, float64(renewals)/float64(trips))
	if trips*50 > renewals {
		t.Fatalf("%d renewals took %d round trips; want batches of 50 or more on average", renewals, trips)
	}
	for i, s := range sessions {
		info, err := st.Get(ctx, fmt.Sprintf("k%d", i))
		if err != nil || !info.Held || info.Holder.FencingToken != s.Lease().FencingToken {
			t.Fatalf("session %d: Get = %+v %v; want held by it", i, info, err)
		}
	}

	// A renewal failing for one lease ends that session only.
	if err := st.Evict(ctx, "k7"); err != nil {
		t.Fatal(err)
	}
	svcWait(t, sessions[7].Done(), "the evicted session to end")
	if err := sessions[7].Err(); !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("evicted session: Err = %v; want ErrLeaseLost", err)
	}
	before := counter.renewals.Load()
	testkit.Eventually(t, svcEventTimeout, "another round of renewals", func() bool { return counter.renewals.Load() >= before+n })
	for i, s := range sessions {
		if i == 7 {
			continue
		}
		select {
		case <-s.Done():
			t.Fatalf("session %d ended with %v after another lease was lost", i, s.Err())
		default:
		}
	}
	for i, s := range sessions {
		err := s.Release(ctx)
		if i == 7 && !errors.Is(err, lock.ErrLeaseLost) || i != 7 && err != nil {
			t.Fatalf("Release %d: %v", i, err)
		}
	}
	// The renewer goroutine ends once no session is left.
	testkit.Eventually(t, svcEventTimeout, "the renewer to stop", func() bool { return runtime.NumGoroutine() <= goroutines+2 })
}

func TestSessionsRenewInBatchesMemory(t *testing.T) {
	mem := lock.NewMemoryStore(nil)
	svc := lock.NewService(mem, nil, nil)
	ctx := svcCtx(t)
	leaks := goleak.IgnoreCurrent()
	var sessions []*lock.Session
	for i := range 200 {
		sess, _, ok, err := svc.Hold(ctx, fmt.Sprint(i), lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: 600 * time.Millisecond}})
		if err != nil || !ok {
			t.Fatalf("Hold: %v %v", ok, err)
		}
		sessions = append(sessions, sess)
	}
	first := make([]time.Time, len(sessions))
	for i, s := range sessions {
		first[i] = s.Lease().ExpireTime
	}
	testkit.Eventually(t, svcEventTimeout, "every session renewed past a TTL", func() bool {
		for i, s := range sessions {
			select {
			case <-s.Done():
				t.Fatalf("session %d ended: %v", i, s.Err())
			default:
			}
			if s.Lease().ExpireTime.Sub(first[i]) < 600*time.Millisecond {
				return false
			}
		}
		return true
	})
	for _, s := range sessions {
		if err := s.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// No goroutine is left once the sessions are gone, even without Close.
	goleak.VerifyNone(t, leaks)
	svc.Close()
	if _, _, _, err := svc.Hold(ctx, "after", lock.HoldOptions{AcquireOptions: lock.AcquireOptions{TTL: time.Second}}); !errors.Is(err, lock.ErrShutdown) {
		t.Fatalf("Hold after Close: %v; want ErrShutdown", err)
	}
	if info, _ := mem.Get(ctx, "after"); info.Held {
		t.Fatalf("Hold after Close left the lock held: %+v", info)
	}
}

func TestRenewManyConformance(t *testing.T) {
	for name, newStore := range map[string]func(*testing.T) storeUnderTest{"memory": memoryStore, "redis": redisStore} {
		t.Run(name, func(t *testing.T) {
			st := newStore(t).store
			ctx := svcCtx(t)
			live, _, ok, err := st.TryAcquire(ctx, "live", "lease-live", "o", time.Minute)
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			if _, _, ok, err := st.TryAcquire(ctx, "gone", "lease-gone", "o", time.Minute); err != nil || !ok {
				t.Fatal(ok, err)
			}
			if err := st.Release(ctx, "gone", "lease-gone"); err != nil {
				t.Fatal(err)
			}
			res := st.(lock.BatchRenewer).RenewMany(ctx, []lock.Renewal{
				{Key: "live", LeaseID: "lease-live", TTL: 2 * time.Minute},
				{Key: "gone", LeaseID: "lease-gone", TTL: time.Minute},
				{Key: "live", LeaseID: "someone-else", TTL: time.Minute},
				{Key: "never", LeaseID: "lease-never", TTL: time.Minute},
			})
			if len(res) != 4 {
				t.Fatalf("%d results for 4 renewals", len(res))
			}
			if res[0].Err != nil || !res[0].ExpireTime.After(live.ExpireTime) {
				t.Fatalf("live lease: %+v; want extended past %v", res[0], live.ExpireTime)
			}
			for i, r := range res[1:] {
				if !errors.Is(r.Err, lock.ErrLeaseLost) {
					t.Fatalf("renewal %d: %+v; want ErrLeaseLost", i+1, r)
				}
			}
			info, err := st.Get(ctx, "live")
			if err != nil || !info.Held || !info.Holder.ExpireTime.Equal(res[0].ExpireTime) {
				t.Fatalf("Get = %+v %v; want held until %v", info, err, res[0].ExpireTime)
			}
		})
	}
}

// On Cluster, one RenewMany spans keys on every master (go-redis splits the
// pipeline by node), and the wait queue lives in the lock's slot.
func TestClusterRenewManyAndQueue(t *testing.T) {
	cl := testharness.StartCluster(t, 3)
	rdb := cl.Client(t)
	st := lock.NewRedisStore(rdb, "cl", 5*time.Second)
	svc := lock.NewService(st, nil, nil)
	defer svc.Close()
	ctx := svcCtx(t)
	var rs []lock.Renewal
	for i := range 30 {
		key := fmt.Sprint("k", i)
		if _, _, ok, err := st.TryAcquire(ctx, key, "lease", "o", time.Minute); err != nil || !ok {
			t.Fatal(ok, err)
		}
		rs = append(rs, lock.Renewal{Key: key, LeaseID: "lease", TTL: time.Minute})
	}
	for i, r := range st.RenewMany(ctx, rs) {
		if r.Err != nil {
			t.Fatalf("renewal %d: %v", i, r.Err)
		}
	}

	other := lock.NewService(lock.NewRedisStore(rdb, "cl", 5*time.Second), nil, nil)
	defer other.Close()
	res := svcAcquireAsync(ctx, other, "k0", lock.AcquireOptions{TTL: time.Minute, Wait: time.Minute, Owner: "waiter"})
	testkit.Eventually(t, svcEventTimeout, "the waiter to queue", func() bool { return len(qQueue(t, rdb, "cl", "k0")) == 1 })
	if err := st.Release(ctx, "k0", "lease"); err != nil {
		t.Fatal(err)
	}
	if r := svcResult(t, res); r.err != nil || !r.ok {
		t.Fatalf("waiter = %+v; want the lock", r)
	}
}
