package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// perRPCBearer is a raw gRPC credential, for WithGRPCOptions.
type perRPCBearer string

func (b perRPCBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (perRPCBearer) RequireTransportSecurity() bool { return false }

// A sidecar started with --api-token-file refuses calls without its token
// (UNAUTHENTICATED). WithToken sends the token, and wins over
// SIDECAR_API_TOKEN; WithGRPCOptions hands Dial raw gRPC options, here a
// credential of the application's own.
func TestDialToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--api-token-file", tokenFile)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(t *testing.T, opts ...resilience.DialOption) error {
		t.Helper()
		conn, err := resilience.Dial(append([]resilience.DialOption{resilience.WithAddr(sc.Addr())}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = v1.NewLockServiceClient(conn).GetLock(ctx, &v1.GetLockRequest{Key: "k"})
		return err
	}
	refused := func(t *testing.T, err error) {
		t.Helper()
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call = %v, want UNAUTHENTICATED", err)
		}
	}
	// No token from the environment unless a subtest sets one.
	t.Setenv(resilience.EnvToken, "")
	t.Setenv(resilience.EnvTokenFile, "")

	t.Run("WithToken", func(t *testing.T) {
		refused(t, call(t))
		refused(t, call(t, resilience.WithToken("wrong-token")))
		if err := call(t, resilience.WithToken("s3cret-token")); err != nil {
			t.Fatalf("with the right token: %v", err)
		}
	})
	t.Run("WithToken overrides SIDECAR_API_TOKEN", func(t *testing.T) {
		t.Setenv(resilience.EnvToken, "wrong-token")
		refused(t, call(t))
		if err := call(t, resilience.WithToken("s3cret-token")); err != nil {
			t.Fatalf("WithToken over a wrong SIDECAR_API_TOKEN: %v", err)
		}
	})
	t.Run("WithGRPCOptions", func(t *testing.T) {
		if err := call(t, resilience.WithGRPCOptions(grpc.WithPerRPCCredentials(perRPCBearer("s3cret-token")))); err != nil {
			t.Fatalf("with the token as a raw gRPC credential: %v", err)
		}
	})
}

// hungLocks is a LockService that answers no call: it reports whether
// the call's context had a deadline, then waits for the caller to give up.
type hungLocks struct {
	v1.UnimplementedLockServiceServer
	deadline chan bool
}

func (h *hungLocks) GetLock(ctx context.Context, _ *v1.GetLockRequest) (*v1.GetLockResponse, error) {
	_, has := ctx.Deadline()
	h.deadline <- has
	<-ctx.Done()
	return nil, ctx.Err()
}

// A call without a deadline of its own gets WithCallTimeout's: against a
// sidecar that never answers it ends DEADLINE_EXCEEDED instead of hanging.
// WithCallTimeout(0) leaves such a call without a deadline.
func TestDialCallTimeoutEndsHungCalls(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hungLocks{deadline: make(chan bool, 1)}
	srv := grpc.NewServer()
	v1.RegisterLockServiceServer(srv, h)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	dial := func(d time.Duration) v1.LockServiceClient {
		conn, err := resilience.Dial(resilience.WithAddr(lis.Addr().String()), resilience.WithCallTimeout(d))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return v1.NewLockServiceClient(conn)
	}

	_, err = dial(200*time.Millisecond).GetLock(context.Background(), &v1.GetLockRequest{Key: "k"})
	if !<-h.deadline {
		t.Fatal("the call reached the sidecar without a deadline; want WithCallTimeout's")
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("hung call: %v, want DEADLINE_EXCEEDED", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := dial(0).GetLock(ctx, &v1.GetLockRequest{Key: "k"})
		done <- err
	}()
	if <-h.deadline {
		t.Fatal("WithCallTimeout(0): the call had a deadline")
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("WithCallTimeout(0), cancelled: %v, want CANCELED", err)
	}
}

// waitServing waits until the sidecar on addr reports SERVING, over a
// connection of its own (the one under test must not be helped).
func waitServing(t *testing.T, addr string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.2, MaxDelay: 50 * time.Millisecond}}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	testkit.EventuallyNil(t, testharness.SidecarReadyTimeout, "the sidecar on "+addr+" SERVING", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			err = fmt.Errorf("status %v", r.GetStatus())
		}
		return err
	})
}

// The reconnect scenario: the sidecar is killed, calls fail as
// unreachable while real time passes (gRPC's default backoff would by
// then wait 4-7s between connect attempts: 1s, 1.6s, 2.6s, 4.1s, 6.6s...),
// and it restarts on the same address: the first call, with a 3s
// deadline, succeeds, because Dial caps the backoff at 1s and the call
// waits for the connection.
func TestReconnectAfterRestart(t *testing.T) {
	scenario(t, "reconnect-after-restart")
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	addr := testharness.FreeAddr(t)
	start := func() *testharness.Sidecar {
		sc := testharness.StartSidecarNoWait(t, bin, "--listen", addr, "--redis-url", rd.URL())
		waitServing(t, addr)
		return sc
	}
	first := start()
	clocks := v1.NewClockServiceClient(dial(t, addr))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := clocks.NextLamport(ctx, &v1.NextLamportRequest{Clock: "reconnect"}); err != nil {
		t.Fatal(err)
	}
	first.Kill()

	outage := time.Now()
	calls := 0
	for time.Since(outage) < 10*time.Second { // real time: the outage gRPC's backoff grows in
		cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := clocks.NextLamport(cctx, &v1.NextLamportRequest{Clock: "reconnect"})
		ccancel()
		if !errors.Is(err, resilience.ErrSidecarUnreachable) {
			t.Fatalf("call during the outage: %v; want ErrSidecarUnreachable", err)
		}
		calls++
	}

	start()
	serving := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
	defer ccancel()
	r, err := clocks.NextLamport(cctx, &v1.NextLamportRequest{Clock: "reconnect"})
	if err != nil {
		t.Fatalf("first call after the restart (%d failed during the outage): %v", calls, err)
	}
	t.Logf("the first call after the restart succeeded %v after the sidecar was serving (%d calls failed during the %v outage)",
		time.Since(serving).Round(time.Millisecond), calls, serving.Sub(outage).Round(time.Millisecond))
	if r.GetFirst() != 2 {
		t.Fatalf("clock %d after the restart; want 2 (kept in Redis)", r.GetFirst())
	}
}
