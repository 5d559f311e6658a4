package server_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// eventTimeout bounds every wait for something that should happen
// promptly; it turns a hang into a failure and asserts no duration.
const eventTimeout = 10 * time.Second

const lockService = "resilience.v1.LockService"

// running is a server.Server serving on a listener, with a client.
type running struct {
	srv    *server.Server
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	served chan error

	stopOnce sync.Once
}

// serve starts srv on lis and dials it with dial (bufconn when nil).
// t.Cleanup shuts it down.
func serve(t *testing.T, srv *server.Server, lis net.Listener, target string, dialer func(context.Context, string) (net.Conn, error)) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if dialer != nil {
		opts = append(opts, grpc.WithContextDialer(dialer))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		cancel()
		t.Fatalf("grpc.NewClient(%q): %v", target, err)
	}
	r := &running{srv: srv, conn: conn, cancel: cancel, served: served}
	t.Cleanup(func() { r.stop(t) })
	return r
}

// start builds a server with opts, lets register add services, and serves
// it over bufconn.
func start(t *testing.T, opts server.Options, register func(*grpc.Server)) *running {
	t.Helper()
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	srv := server.New(opts)
	if register != nil {
		register(srv.GRPC())
	}
	lis := bufconn.Listen(1 << 20)
	return serve(t, srv, lis, "passthrough:///bufconn", func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
}

// stop cancels Serve's context and checks that Serve returns nil.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.stopOnce.Do(func() {
		r.cancel()
		r.waitServed(t)
		_ = r.conn.Close()
	})
}

func (r *running) waitServed(t *testing.T) {
	t.Helper()
	select {
	case err := <-r.served:
		if err != nil {
			t.Errorf("Serve = %v after shutdown; want nil", err)
		}
	case <-time.After(eventTimeout):
		t.Errorf("Serve did not return after shutdown")
	}
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	t.Cleanup(cancel)
	return ctx
}

// stubLock is a LockService whose GetLock always answers held and whose
// other methods the tests plug in.
type stubLock struct {
	v1.UnimplementedLockServiceServer
	acquire func(context.Context, *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error)
	hold    func(v1.LockService_HoldLockServer) error
}

func (s *stubLock) AcquireLock(ctx context.Context, r *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error) {
	if s.acquire == nil {
		return &v1.AcquireLockResponse{Acquired: true}, nil
	}
	return s.acquire(ctx, r)
}

func (s *stubLock) HoldLock(stream v1.LockService_HoldLockServer) error {
	if s.hold == nil {
		return stream.Send(&v1.HoldLockResponse{Event: &v1.HoldLockResponse_Released_{Released: &v1.HoldLockResponse_Released{}}})
	}
	return s.hold(stream)
}

func (s *stubLock) GetLock(context.Context, *v1.GetLockRequest) (*v1.GetLockResponse, error) {
	return &v1.GetLockResponse{Held: true}, nil
}

func registerLock(s *stubLock) func(*grpc.Server) {
	return func(g *grpc.Server) { v1.RegisterLockServiceServer(g, s) }
}

func mustGetLock(t *testing.T, ctx context.Context, c v1.LockServiceClient) {
	t.Helper()
	resp, err := c.GetLock(ctx, &v1.GetLockRequest{Key: "k"})
	if err != nil || !resp.GetHeld() {
		t.Fatalf("GetLock = %v, %v; want the stub's answer", resp, err)
	}
}

// holdOnce opens HoldLock, sends one message and returns the first reply.
func holdOnce(ctx context.Context, c v1.LockServiceClient) (*v1.HoldLockResponse, error) {
	stream, err := c.HoldLock(ctx)
	if err != nil {
		return nil, err
	}
	_ = stream.Send(&v1.HoldLockRequest{}) // an error here shows in Recv
	return stream.Recv()
}

func healthStatus(t *testing.T, ctx context.Context, conn *grpc.ClientConn, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health Check(%q): %v", service, err)
	}
	return resp.GetStatus()
}

// waitHealth polls Check until service reports want.
func waitHealth(t *testing.T, conn *grpc.ClientConn, service string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	testkit.EventuallyNil(t, eventTimeout, fmt.Sprintf("health of %q %v", service, want), func() error {
		if got := healthStatus(t, callCtx(t), conn, service); got != want {
			return fmt.Errorf("health is %v", got)
		}
		return nil
	})
}

func listServices(t *testing.T, ctx context.Context, conn *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("reflection send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection list services: %v", err)
	}
	if e := resp.GetErrorResponse(); e != nil {
		t.Fatalf("reflection error: %v", e)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	_ = stream.CloseSend()
	return names
}

func TestPanicIsRecoveredToInternal(t *testing.T) {
	stub := &stubLock{
		acquire: func(context.Context, *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error) {
			panic("secret-panic-value")
		},
		hold: func(v1.LockService_HoldLockServer) error {
			var m map[string]int
			//lint:ignore SA5000 the write to a nil map is the runtime panic under test
			m["x"] = 1 // a runtime panic, not a panic(string)
			return nil
		},
	}
	r := start(t, server.Options{}, registerLock(stub))
	c := v1.NewLockServiceClient(r.conn)
	cases := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"unary", func(ctx context.Context) error {
			_, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k"})
			return err
		}},
		{"stream", func(ctx context.Context) error {
			_, err := holdOnce(ctx, c)
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(callCtx(t))
			st, _ := status.FromError(err)
			if st.Code() != codes.Internal || st.Message() != "internal error" {
				t.Fatalf("panicking handler: %v; want INTERNAL \"internal error\"", err)
			}
			if strings.Contains(err.Error(), "secret-panic-value") || strings.Contains(err.Error(), "nil map") {
				t.Fatalf("the panic leaks to the client: %v", err)
			}
			// The server survived and the same connection still works.
			mustGetLock(t, callCtx(t), c)
		})
	}
}

func TestBearerTokenAuth(t *testing.T) {
	const token = "s3cret-token"
	r := start(t, server.Options{APIToken: token}, registerLock(&stubLock{}))
	c := v1.NewLockServiceClient(r.conn)
	withAuth := func(ctx context.Context, value string) context.Context {
		if value == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, "authorization", value)
	}
	cases := []struct {
		name  string
		value string // authorization header; "" = none
		want  codes.Code
	}{
		{"missing", "", codes.Unauthenticated},
		{"wrong token", "Bearer nope", codes.Unauthenticated},
		{"token prefix", "Bearer " + token[:len(token)-1], codes.Unauthenticated},
		{"token with suffix", "Bearer " + token + "x", codes.Unauthenticated},
		{"wrong scheme", "Basic " + token, codes.Unauthenticated},
		{"empty bearer", "Bearer ", codes.Unauthenticated},
		{"right token", "Bearer " + token, codes.OK},
		{"scheme is case-insensitive", "bearer " + token, codes.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.GetLock(withAuth(callCtx(t), tc.value), &v1.GetLockRequest{Key: "k"})
			if got := status.Code(err); got != tc.want {
				t.Errorf("unary GetLock: %v; want %v", err, tc.want)
			}
			_, err = holdOnce(withAuth(callCtx(t), tc.value), c)
			if got := status.Code(err); got != tc.want {
				t.Errorf("stream HoldLock: %v; want %v", err, tc.want)
			}
		})
	}
	t.Run("health without token", func(t *testing.T) {
		if got := healthStatus(t, callCtx(t), r.conn, ""); got != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health = %v; want SERVING", got)
		}
		if got := healthStatus(t, callCtx(t), r.conn, lockService); got != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health(%s) = %v; want SERVING", lockService, got)
		}
	})
	t.Run("reflection without token", func(t *testing.T) {
		names := listServices(t, callCtx(t), r.conn)
		for _, want := range []string{lockService, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
			if !slices.Contains(names, want) {
				t.Errorf("reflection lists %q; want %q among them", names, want)
			}
		}
	})
}

// flakyPinger is a store.Pinger whose verdict the test flips.
type flakyPinger struct{ down atomic.Bool }

func (p *flakyPinger) Ping(context.Context) error {
	if p.down.Load() {
		return store.Unavailable(errors.New("connection refused"))
	}
	return nil
}

func TestHealthFollowsStore(t *testing.T) {
	p := &flakyPinger{}
	r := start(t, server.Options{Store: p, HealthInterval: 20 * time.Millisecond}, registerLock(&stubLock{}))
	steps := []struct {
		down bool
		want healthpb.HealthCheckResponse_ServingStatus
	}{
		{false, healthpb.HealthCheckResponse_SERVING},
		{true, healthpb.HealthCheckResponse_NOT_SERVING},
		{false, healthpb.HealthCheckResponse_SERVING},
		{true, healthpb.HealthCheckResponse_NOT_SERVING},
		{false, healthpb.HealthCheckResponse_SERVING},
	}
	for _, step := range steps {
		p.down.Store(step.down)
		for _, svc := range []string{"", lockService} {
			waitHealth(t, r.conn, svc, step.want)
		}
	}
	if _, err := healthpb.NewHealthClient(r.conn).Check(callCtx(t), &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Errorf("health of an unknown service: %v; want NOT_FOUND", err)
	}
}

func TestHealthNotServingWhenStoreDownAtStart(t *testing.T) {
	p := &flakyPinger{}
	p.down.Store(true)
	r := start(t, server.Options{Store: p, HealthInterval: 20 * time.Millisecond}, registerLock(&stubLock{}))
	// The first probe runs before Serve accepts calls: no SERVING glimpse.
	for _, svc := range []string{"", lockService} {
		if got := healthStatus(t, callCtx(t), r.conn, svc); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("health(%q) = %v with the store down; want NOT_SERVING", svc, got)
		}
	}
	p.down.Store(false)
	waitHealth(t, r.conn, lockService, healthpb.HealthCheckResponse_SERVING)
}

func TestShutdownDrainsAfterNotServing(t *testing.T) {
	entered := make(chan struct{})
	unblock := make(chan struct{})
	stub := &stubLock{acquire: func(context.Context, *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error) {
		close(entered)
		<-unblock // deliberately deaf to Stopping: only the drain waits for it
		return &v1.AcquireLockResponse{Acquired: true}, nil
	}}
	r := start(t, server.Options{ShutdownTimeout: time.Minute}, registerLock(stub))
	defer func() {
		select {
		case <-unblock:
		default:
			close(unblock)
		}
	}()

	watchCtx, stopWatch := context.WithCancel(callCtx(t))
	defer stopWatch()
	watch, err := healthpb.NewHealthClient(r.conn).Watch(watchCtx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first health = %v, %v; want SERVING", resp, err)
	}

	inflight := make(chan error, 1)
	go func() {
		resp, err := v1.NewLockServiceClient(r.conn).AcquireLock(callCtx(t), &v1.AcquireLockRequest{Key: "k"})
		if err == nil && !resp.GetAcquired() {
			err = errors.New("in-flight call answered " + resp.String())
		}
		inflight <- err
	}()
	select {
	case <-entered:
	case <-time.After(eventTimeout):
		t.Fatal("in-flight call never reached the handler")
	}

	r.cancel() // shutdown begins
	resp, err := watch.Recv()
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after shutdown began = %v, %v; want NOT_SERVING", resp, err)
	}
	select {
	case <-r.srv.Stopping().Done():
	case <-time.After(eventTimeout):
		t.Fatal("Stopping() not cancelled by the shutdown")
	}
	// Still draining: neither the call nor Serve is done.
	select {
	case err := <-inflight:
		t.Fatalf("in-flight call ended before it was let go: %v", err)
	case err := <-r.served:
		t.Fatalf("Serve returned %v while a call was in flight", err)
	default:
	}
	stopWatch() // the watch is in flight too; end it so the drain can finish
	close(unblock)
	select {
	case err := <-inflight:
		if err != nil {
			t.Fatalf("in-flight call was not drained: %v", err)
		}
	case <-time.After(eventTimeout):
		t.Fatal("in-flight call never finished")
	}
	r.stop(t) // Serve returns nil
}

func TestShutdownCutsCallsAfterDrainTimeout(t *testing.T) {
	stub := &stubLock{acquire: func(ctx context.Context, _ *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error) {
		<-ctx.Done() // never finishes by itself
		return nil, ctx.Err()
	}}
	entered := make(chan struct{})
	inner := stub.acquire
	var once sync.Once
	stub.acquire = func(ctx context.Context, r *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error) {
		once.Do(func() { close(entered) })
		return inner(ctx, r)
	}
	r := start(t, server.Options{ShutdownTimeout: 100 * time.Millisecond}, registerLock(stub))
	inflight := make(chan error, 1)
	go func() {
		_, err := v1.NewLockServiceClient(r.conn).AcquireLock(callCtx(t), &v1.AcquireLockRequest{Key: "k"})
		inflight <- err
	}()
	select {
	case <-entered:
	case <-time.After(eventTimeout):
		t.Fatal("call never reached the handler")
	}
	r.stop(t) // returns nil after cutting the call
	select {
	case err := <-inflight:
		if err == nil {
			t.Fatal("a call stuck past the drain timeout succeeded")
		}
	case <-time.After(eventTimeout):
		t.Fatal("the stuck call was not cut")
	}
}

func TestListenUnixReplacesStaleSocket(t *testing.T) {
	// Unix socket paths are short (about 100 bytes): t.TempDir can be too long.
	dir, err := os.MkdirTemp("", "rs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "sidecar.sock")

	// A sidecar that crashed leaves its socket file behind.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("stale socket not left behind: %v, %v", fi, err)
	}
	if _, err := net.Listen("unix", path); err == nil {
		t.Fatal("net.Listen succeeded on a stale socket; the test proves nothing")
	}

	lis, err := server.Listen("unix", path, server.UnixSocket{})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	srv := server.New(server.Options{Log: slog.New(slog.DiscardHandler)})
	r := serve(t, srv, lis, "unix://"+path, nil)
	if got := healthStatus(t, callCtx(t), r.conn, ""); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health over the unix socket = %v; want SERVING", got)
	}
}

func TestListenTCP(t *testing.T) {
	lis, err := server.Listen("tcp", "127.0.0.1:0", server.UnixSocket{})
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{Log: slog.New(slog.DiscardHandler)})
	r := serve(t, srv, lis, lis.Addr().String(), nil)
	if got := healthStatus(t, callCtx(t), r.conn, ""); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health over TCP = %v; want SERVING", got)
	}
	r.stop(t)
	if c, err := net.DialTimeout("tcp", lis.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Fatal("listener still accepting after shutdown")
	}
}
