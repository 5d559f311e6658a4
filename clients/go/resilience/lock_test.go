package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func locks(t *testing.T) v1.LockServiceClient {
	t.Helper()
	conn, err := resilience.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewLockServiceClient(conn)
}

func TestWithLockCancelsCallbackWhenLeaseIsLost(t *testing.T) {
	c := locks(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := "client/maxhold-" + t.Name() + time.Now().Format("150405.000000000")
	err := resilience.WithLock(ctx, c, key, func(ctx context.Context, lease resilience.Lease) error {
		<-ctx.Done() // the sidecar ends the session at max_hold
		if !errors.Is(context.Cause(ctx), resilience.ErrLeaseLost) {
			t.Errorf("cause = %v, want ErrLeaseLost", context.Cause(ctx))
		}
		return nil
	}, resilience.WithTTL(time.Second), resilience.WithMaxHold(300*time.Millisecond))
	if !errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("WithLock = %v, want ErrLeaseLost", err)
	}
	// The lock is free again.
	r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key})
	if err != nil || !r.GetAcquired() {
		t.Fatalf("after lost session: %v %v", r, err)
	}
}

func TestWithLockReleasesAndReturnsCallbackError(t *testing.T) {
	c := locks(t)
	ctx := context.Background()
	boom := errors.New("boom")
	var token uint64
	err := resilience.WithLock(ctx, c, "client/err", func(_ context.Context, l resilience.Lease) error {
		token = l.FencingToken
		return boom
	})
	if !errors.Is(err, boom) || errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("WithLock = %v, want boom only", err)
	}
	info, err := c.GetLock(ctx, &v1.GetLockRequest{Key: "client/err"})
	if err != nil || info.GetHeld() || info.GetLastFencingToken() != token {
		t.Fatalf("after WithLock: %v %v", info, err)
	}
}

func TestTypedErrors(t *testing.T) {
	c := locks(t)
	ctx := context.Background()
	_, err := c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "client/none", LeaseId: "0123456789abcdef0123456789abcdef"})
	if !errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("release of unknown lease = %v, want ErrLeaseLost", err)
	}
	_, err = c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: ""})
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrInvalidArgument) || !errors.As(err, &e) || e.Violations["key"] == "" {
		t.Fatalf("empty key = %v, want ErrInvalidArgument naming key", err)
	}
	err = resilience.WithLock(ctx, c, "", func(context.Context, resilience.Lease) error { return nil })
	if !errors.Is(err, resilience.ErrInvalidArgument) {
		t.Fatalf("WithLock with empty key = %v", err)
	}
}

// WithWait makes WithLock wait for a held lock: it runs fn once the holder
// releases, where a WithLock without it is told at once that the lock is
// held. The sidecar runs on Redis so that the test can see the wait begin:
// a waiting sidecar stands in the key's queue (docs/locks.md), and the
// holder releases only then, so the grant can only come from the wait.
func TestWithLockWithWaitGetsTheLockOnRelease(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", rd.URL())
	conn, err := resilience.Dial(resilience.WithAddr(sc.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := v1.NewLockServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const key = "client/wait"
	held, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(time.Hour), Owner: "holder"})
	if err != nil || !held.GetAcquired() {
		t.Fatalf("holder: %v %v", held, err)
	}
	noop := func(context.Context, resilience.Lease) error { return nil }
	if err := resilience.WithLock(ctx, c, key, noop); !errors.Is(err, resilience.ErrNotAcquired) {
		t.Fatalf("WithLock without WithWait on a held lock = %v, want ErrNotAcquired", err)
	}

	type result struct {
		lease resilience.Lease
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = resilience.WithLock(ctx, c, key, func(_ context.Context, l resilience.Lease) error {
			r.lease = l
			return nil
		}, resilience.WithWait(time.Minute), resilience.WithOwner("waiter"))
		done <- r
	}()
	rdb := rd.Client(t)
	queue := redisx.Key("default", redisx.Lock, key, "lock:queue")
	testkit.EventuallyNil(t, 30*time.Second, "the waiter in the queue "+queue, func() error {
		n, err := rdb.ZCard(ctx, queue).Result()
		if err == nil && n != 1 {
			err = fmt.Errorf("%d in the queue", n)
		}
		return err
	})
	if _, err := c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: held.GetLease().GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.lease.Owner != "waiter" || r.lease.FencingToken <= held.GetLease().GetFencingToken() {
		t.Fatalf("waiter: lease %+v, %v; want the lock after the holder's token %d", r.lease, r.err, held.GetLease().GetFencingToken())
	}
}
