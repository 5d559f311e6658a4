package e2e

// Wait queues and batched session renewal across real sidecar processes
// (docs/locks.md).

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// waitQueueLen polls the sidecar queue of key until it has n entries.
func waitQueueLen(t *testing.T, rdb *redis.Client, key string, n int) []string {
	t.Helper()
	q := redisx.Key("default", redisx.Lock, key, "lock:queue")
	var ids []string
	testkit.EventuallyNil(t, 30*time.Second, fmt.Sprintf("%d entries in queue %s", n, q), func() (err error) {
		ids, err = rdb.ZRange(context.Background(), q, 0, -1).Result()
		if err == nil && len(ids) != n {
			err = fmt.Errorf("queue %v", ids)
		}
		return err
	})
	return ids
}

type acquireResult struct {
	resp *v1.AcquireLockResponse
	err  error
}

func acquireAsync(ctx context.Context, c v1.LockServiceClient, key, owner string) <-chan acquireResult {
	res := make(chan acquireResult, 1)
	go func() {
		r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(time.Hour), WaitTimeout: durationpb.New(time.Minute), Owner: owner})
		res <- acquireResult{r, err}
	}()
	return res
}

func mustGet(t *testing.T, res <-chan acquireResult, who string) *v1.Lease {
	t.Helper()
	select {
	case r := <-res:
		if r.err != nil || !r.resp.GetAcquired() {
			t.Fatalf("%s: %v %v; want acquired", who, r.resp, r.err)
		}
		return r.resp.GetLease()
	case <-time.After(time.Minute):
		t.Fatalf("%s: not granted", who)
		return nil
	}
}

// The lock passes between sidecars in the order they started waiting: a
// waiter on B queued before a waiter on A gets the lock first, even though
// the release happens on A.
func TestLockQueuePassesToTheSidecarThatWaitedFirst(t *testing.T) {
	rd := testharness.StartRedis(t)
	rdb := rd.Client(t)
	sc := startSidecars(t, 2, rd.URL())
	a, b := lockClient(t, sc[0]), lockClient(t, sc[1])
	ctx := ctxT(t, 2*time.Minute)
	held, err := a.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "fifo", Ttl: durationpb.New(time.Hour), Owner: "holder"})
	if err != nil || !held.GetAcquired() {
		t.Fatal(held, err)
	}
	fromB := acquireAsync(ctx, b, "fifo", "b")
	waitQueueLen(t, rdb, "fifo", 1)
	fromA := acquireAsync(ctx, a, "fifo", "a")
	waitQueueLen(t, rdb, "fifo", 2)
	if _, err := a.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "fifo", LeaseId: held.GetLease().GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	lb := mustGet(t, fromB, "waiter on B")
	select {
	case r := <-fromA:
		t.Fatalf("waiter on A returned %v %v while B holds the lock", r.resp, r.err)
	default:
	}
	if info, err := a.GetLock(ctx, &v1.GetLockRequest{Key: "fifo"}); err != nil || info.GetHolder().GetOwner() != "b" {
		t.Fatalf("GetLock = %v %v; want held by b", info, err)
	}
	if _, err := b.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "fifo", LeaseId: lb.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	if la := mustGet(t, fromA, "waiter on A"); la.GetFencingToken() <= lb.GetFencingToken() {
		t.Fatalf("A's token %d not above B's %d", la.GetFencingToken(), lb.GetFencingToken())
	}
	waitQueueLen(t, rdb, "fifo", 0)
}

// A sidecar killed while queued holds up the others only for the grace a
// free lock is kept for the queue's head (lock.DefaultGrace), not until
// their waits time out.
func TestLockQueueEntryOfKilledSidecarExpires(t *testing.T) {
	rd := testharness.StartRedis(t)
	rdb := rd.Client(t)
	sc := startSidecars(t, 3, rd.URL())
	a, b, c := lockClient(t, sc[0]), lockClient(t, sc[1]), lockClient(t, sc[2])
	ctx := ctxT(t, 2*time.Minute)
	held, err := a.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "crash", Ttl: durationpb.New(time.Hour), Owner: "holder"})
	if err != nil || !held.GetAcquired() {
		t.Fatal(held, err)
	}
	bctx, cancelB := context.WithCancel(ctx)
	defer cancelB()
	_ = acquireAsync(bctx, b, "crash", "b")
	waitQueueLen(t, rdb, "crash", 1)
	fromC := acquireAsync(ctx, c, "crash", "c")
	waitQueueLen(t, rdb, "crash", 2)
	sc[1].Kill()
	if _, err := a.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "crash", LeaseId: held.GetLease().GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	if l := mustGet(t, fromC, "waiter on C"); l.GetOwner() != "c" {
		t.Fatalf("lease %v", l)
	}
	waitQueueLen(t, rdb, "crash", 0)
}

// Many HoldLock sessions on one sidecar: all stay held across many TTLs,
// each costs at most two goroutines (its stream handler and its reader),
// and a lease lost by one ends that session only, with LEASE_LOST.
func TestHoldLockManySessionsRenewedInBatches(t *testing.T) {
	rd := testharness.StartRedis(t)
	rdb := rd.Client(t)
	bin := testharness.BuildSidecar(t)
	metrics := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--metrics-listen", metrics)
	c := lockClient(t, sc)
	ctx, cancel := context.WithCancel(ctxT(t, 3*time.Minute))
	defer cancel()
	baseline := metricValue(t, metrics, "go_goroutines")

	const n = 200
	ttl := time.Second
	streams := make([]v1.LockService_HoldLockClient, n)
	for i := range n {
		s, err := c.HoldLock(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{
			Key: fmt.Sprintf("many-%d", i), Ttl: durationpb.New(ttl)}}}); err != nil {
			t.Fatal(err)
		}
		if m, err := s.Recv(); err != nil || m.GetAcquired() == nil {
			t.Fatalf("session %d: %v %v", i, m, err)
		}
		streams[i] = s
	}
	goroutines := metricValue(t, metrics, "go_goroutines") - baseline
	t.Logf("%d sessions: %.0f goroutines more (%.2f each)", n, goroutines, goroutines/n)
	if goroutines > 2*n+10 {
		t.Fatalf("%d sessions cost %.0f goroutines; want at most 2 each", n, goroutines)
	}
	// Four renewals each: held across more than one TTL.
	for i, s := range streams {
		for range 4 {
			if m, err := s.Recv(); err != nil || m.GetRenewed() == nil {
				t.Fatalf("session %d: %v %v; want renewed", i, m, err)
			}
		}
	}
	// One lease lost: only its session ends.
	if err := rdb.Del(ctx, redisx.Key("default", redisx.Lock, "many-3", "lock")).Err(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := streams[3].Recv()
		if err != nil {
			t.Fatalf("session 3 ended without a lost event: %v", err)
		}
		if m.GetLost() != nil {
			if m.GetLost().GetReason() != v1.HoldLockResponse_Lost_REASON_LEASE_LOST {
				t.Fatalf("lost = %v; want LEASE_LOST", m.GetLost())
			}
			break
		}
	}
	for i, s := range streams {
		if i == 3 {
			continue
		}
		if m, err := s.Recv(); err != nil || m.GetRenewed() == nil {
			t.Fatalf("session %d after another's loss: %v %v; want renewed", i, m, err)
		}
		if err := s.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Release_{Release: &v1.HoldLockRequest_Release{}}}); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := s.Recv()
			if err != nil {
				t.Fatalf("session %d: %v before released", i, err)
			}
			if m.GetReleased() != nil {
				break
			}
			if m.GetRenewed() == nil {
				t.Fatalf("session %d: %v; want released", i, m)
			}
		}
	}
}
