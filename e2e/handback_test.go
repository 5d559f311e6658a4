package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// Issue 16, section 1: a call that fails leaves no grant behind. Calls
// whose deadlines (1-6 ms) expire while the sidecar and the store work on
// them may have been granted by the store; the sidecar gives every such
// grant back, so no key stays held for the hour of its TTL.

// orphanCalls is the number of calls per run, each on its own key.
const orphanCalls = 3000

// orphanTopologies are the stores the orphan tests run on: the embedded
// store, Redis and a 3-master Cluster.
func orphanTopologies(t *testing.T) []struct {
	name string
	args func(t *testing.T) []string
} {
	return []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"embedded", func(t *testing.T) []string { return nil }},
		{"redis", func(t *testing.T) []string {
			return []string{"--redis-url", testharness.StartRedis(t).URL()}
		}},
		{"cluster", func(t *testing.T) []string {
			return []string{"--redis-mode", "cluster", "--redis-url", testharness.StartCluster(t, 3).URL()}
		}},
	}
}

// shortDeadlineCalls runs call(ctx, i) for i in [0, orphanCalls) from 16
// goroutines, each with a deadline of 1-6 ms. call reports whether the
// caller got a grant (which it then gives back itself). It returns how
// many were granted and how many failed.
func shortDeadlineCalls(t *testing.T, call func(ctx context.Context, i int) (granted bool, err error)) (granted, failed int64) {
	t.Helper()
	var g, f atomic.Int64
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= orphanCalls {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%6)*time.Millisecond)
				ok, err := call(ctx, i)
				cancel()
				switch {
				case err != nil:
					f.Add(1)
				case ok:
					g.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return g.Load(), f.Load()
}

// eventuallyNone polls count until it returns 0, failing with the last
// count after a generous bound (no timing is asserted: these machines are
// shared). It returns what the first poll found and when the last began.
func eventuallyNone(t *testing.T, what string, count func() int) (first int, after time.Duration) {
	t.Helper()
	start := time.Now()
	first = -1
	testkit.EventuallyNil(t, 30*time.Second, what+" all given back", func() error {
		after = time.Since(start)
		n := count()
		if first < 0 {
			first = n
		}
		if n != 0 {
			return fmt.Errorf("%d still held", n)
		}
		return nil
	})
	return first, after
}

func TestTimedOutAcquiresLeaveNoLockHeld(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	for _, tp := range orphanTopologies(t) {
		t.Run(tp.name, func(t *testing.T) {
			sc := testharness.StartSidecar(t, bin, tp.args(t)...)
			c := lockClient(t, sc)
			key := func(i int) string { return fmt.Sprintf("orphan-%d", i) }
			granted, failed := shortDeadlineCalls(t, func(ctx context.Context, i int) (bool, error) {
				r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i), Ttl: durationpb.New(time.Hour)})
				if err != nil || !r.GetAcquired() {
					return false, err
				}
				// A grant that reached us is ours to give back.
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := c.ReleaseLock(rctx, &v1.ReleaseLockRequest{Key: key(i), LeaseId: r.GetLease().GetLeaseId()}); err != nil {
					t.Errorf("release %s: %v", key(i), err)
				}
				return true, nil
			})
			ctx := ctxT(t, time.Minute)
			first, after := eventuallyNone(t, "locks", func() int {
				held := 0
				for i := range orphanCalls {
					r, err := c.GetLock(ctx, &v1.GetLockRequest{Key: key(i)})
					if err != nil {
						t.Fatal(err)
					}
					if r.GetHeld() {
						held++
					}
				}
				return held
			})
			t.Logf("%d calls: %d granted and released by the client, %d failed; right after them %d keys held, none from %v on",
				orphanCalls, granted, failed, first, after.Round(time.Millisecond))
		})
	}
}

func TestTimedOutClaimsLeaveNoKeyInProgress(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	for _, tp := range orphanTopologies(t) {
		t.Run(tp.name, func(t *testing.T) {
			sc := testharness.StartSidecar(t, bin, tp.args(t)...)
			c := v1.NewIdempotencyServiceClient(sc.Conn(t))
			key := func(i int) string { return fmt.Sprintf("orphan-%d", i) }
			granted, failed := shortDeadlineCalls(t, func(ctx context.Context, i int) (bool, error) {
				r, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{
					Key: key(i), Fingerprint: "fp", LeaseTtl: durationpb.New(time.Hour)})
				if err != nil || r.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
					return false, err
				}
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := c.ReleaseIdempotency(rctx, &v1.ReleaseIdempotencyRequest{Key: key(i), LeaseId: r.GetLeaseId()}); err != nil {
					t.Errorf("release %s: %v", key(i), err)
				}
				return true, nil
			})
			ctx := ctxT(t, time.Minute)
			first, after := eventuallyNone(t, "idempotency keys", func() int {
				busy := 0
				for i := range orphanCalls {
					r, err := c.GetIdempotency(ctx, &v1.GetIdempotencyRequest{Key: key(i)})
					if err != nil {
						t.Fatal(err)
					}
					if r.GetState() == v1.GetIdempotencyResponse_STATE_IN_PROGRESS {
						busy++
					}
				}
				return busy
			})
			t.Logf("%d calls: %d started and released by the client, %d failed; right after them %d keys in progress, none from %v on",
				orphanCalls, granted, failed, first, after.Round(time.Millisecond))
		})
	}
}

// A grant made by a paused Redis after the sidecar gave up on it is given
// back once Redis runs again: the call got UNAVAILABLE, so nobody may hold
// the lock (or the idempotency key) for the hour of its TTL.
func TestGrantOfPausedRedisIsGivenBack(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--store-timeout", "300ms")
	locks := lockClient(t, sc)
	idem := v1.NewIdempotencyServiceClient(sc.Conn(t))
	ctx := ctxT(t, time.Minute)

	rd.Pause()
	_, lockErr := locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "paused", Ttl: durationpb.New(time.Hour)})
	_, idemErr := idem.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{
		Key: "paused", Fingerprint: "fp", LeaseTtl: durationpb.New(time.Hour)})
	rd.Resume()
	for what, err := range map[string]error{"AcquireLock": lockErr, "CheckOrRecordIdempotency": idemErr} {
		if code, reason := reasonOf(err); code != codes.Unavailable {
			t.Fatalf("%s on a paused Redis: %v (%v %s), want UNAVAILABLE", what, err, code, reason)
		}
	}
	_, took := eventuallyNone(t, "paused grants", func() int {
		n := 0
		if r, err := locks.GetLock(ctx, &v1.GetLockRequest{Key: "paused"}); err != nil || r.GetHeld() {
			n++
		}
		if r, err := idem.GetIdempotency(ctx, &v1.GetIdempotencyRequest{Key: "paused"}); err != nil ||
			r.GetState() == v1.GetIdempotencyResponse_STATE_IN_PROGRESS {
			n++
		}
		return n
	})
	t.Logf("free %v after Redis resumed", took.Round(time.Millisecond))
	// The key is usable at once, not after its TTL.
	r, err := locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "paused", Ttl: durationpb.New(time.Minute)})
	if err != nil || !r.GetAcquired() {
		t.Fatalf("AcquireLock after the give-back: %v, %v", r, err)
	}
}
