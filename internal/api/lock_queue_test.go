package api_test

// The lock API over queued waiters (docs/locks.md): shutdown ends every
// waiter of a key's queue, not only its head, and queued waiters cost no
// goroutine beyond their call's.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// startQueueSidecar is startSidecar on a memory store that also returns
// the lock Service, to observe its queues.
func startQueueSidecar(t *testing.T) (*sidecar, *lock.Service) {
	t.Helper()
	st := lock.NewMemoryStore(nil)
	discard := slog.New(slog.DiscardHandler)
	svc := lock.NewService(st, nil, discard)
	srv := server.New(server.Options{Log: discard, ShutdownTimeout: 5 * time.Second})
	v1.RegisterLockServiceServer(srv.GRPC(), api.NewLockServer(srv.Stopping(), svc, discard))
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		cancel()
		t.Fatalf("grpc.NewClient: %v", err)
	}
	sc := &sidecar{client: v1.NewLockServiceClient(conn), conn: conn, store: st, cancel: cancel, served: served}
	t.Cleanup(func() { sc.stop(t); svc.Close() })
	return sc, svc
}

func waitWaiters(t *testing.T, svc *lock.Service, key string, n int) {
	t.Helper()
	testkit.EventuallyNil(t, eventTimeout, fmt.Sprintf("%d waiters on %q", n, key), func() error {
		if got := svc.Waiters(key); got != n {
			return fmt.Errorf("%d waiters", got)
		}
		return nil
	})
}

func TestAcquireLockQueuedWaitersAllEndOnShutdown(t *testing.T) {
	sc, svc := startQueueSidecar(t)
	mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour)})
	const n = 5
	errc := make(chan error, n)
	for range n {
		go func() {
			_, err := sc.client.AcquireLock(rpcCtx(t), &v1.AcquireLockRequest{Key: "k", WaitTimeout: dur(time.Minute)})
			errc <- err
		}()
	}
	waitWaiters(t, svc, "k", n)
	sc.cancel()
	for range n {
		select {
		case err := <-errc:
			wantReason(t, err, codes.Unavailable, api.ReasonShuttingDown)
		case <-time.After(eventTimeout):
			t.Fatal("a queued waiter was not ended by the shutdown")
		}
	}
	sc.stop(t)
}

func TestAcquireLockQueuedWaitersCancelledLeaveNothing(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	sc, svc := startQueueSidecar(t)
	holder := mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour)})
	ctx, cancel := context.WithCancel(context.Background())
	const n = 10
	errc := make(chan error, n)
	for range n {
		go func() {
			_, err := sc.client.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", WaitTimeout: dur(time.Minute)})
			errc <- err
		}()
	}
	waitWaiters(t, svc, "k", n)
	// One more waiter that stays: the cancelled ones ahead of it must not
	// hold it up.
	stays := make(chan *v1.AcquireLockResponse, 1)
	go func() {
		r, err := sc.client.AcquireLock(rpcCtx(t), &v1.AcquireLockRequest{Key: "k", WaitTimeout: dur(time.Minute), Owner: "stays"})
		if err != nil {
			t.Error(err)
		}
		stays <- r
	}()
	waitWaiters(t, svc, "k", n+1)
	cancel()
	for range n {
		if err := <-errc; err == nil {
			t.Fatal("cancelled waiter returned no error")
		}
	}
	waitWaiters(t, svc, "k", 1)
	if _, err := sc.client.ReleaseLock(rpcCtx(t), &v1.ReleaseLockRequest{Key: "k", LeaseId: holder.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-stays:
		if !r.GetAcquired() || r.GetLease().GetOwner() != "stays" {
			t.Fatalf("remaining waiter = %v; want acquired", r)
		}
	case <-time.After(eventTimeout):
		t.Fatal("remaining waiter not granted")
	}
	waitWaiters(t, svc, "k", 0)
	sc.stop(t)
	svc.Close()
	goleak.VerifyNone(t, leaks)
}
