package resilience_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
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

func TestDialStoppedSidecarFailsFast(t *testing.T) {
	conn, err := resilience.Dial(resilience.WithAddr("127.0.0.1:1"), resilience.WithCallTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = v1.NewLockServiceClient(conn).GetLock(context.Background(), &v1.GetLockRequest{Key: "k"})
	if err == nil {
		t.Fatal("call to a stopped sidecar succeeded")
	}
}
