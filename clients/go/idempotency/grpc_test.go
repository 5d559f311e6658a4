package idempotency_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// healthApp is the gRPC service behind the interceptor in the tests: the
// standard health service, whose Check counts its runs and answers what
// respond says for run n (1 for the first). By default it answers SERVING
// on the first run and NOT_SERVING after, so a replay is told apart from a
// run.
type healthApp struct {
	healthpb.UnimplementedHealthServer
	runs    atomic.Int32
	respond func(n int32) (*healthpb.HealthCheckResponse, error)
}

func (h *healthApp) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	n := h.runs.Add(1)
	if h.respond != nil {
		return h.respond(n)
	}
	return firstServing(n)
}

func firstServing(n int32) (*healthpb.HealthCheckResponse, error) {
	if n == 1 {
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}, nil
}

// serveGRPC runs h on a real gRPC server behind UnaryServerInterceptor
// and returns a client of it.
func serveGRPC(t *testing.T, client v1.IdempotencyServiceClient, h healthpb.HealthServer, opts ...idempotency.Option) healthpb.HealthClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(idempotency.UnaryServerInterceptor(client, opts...)))
	healthpb.RegisterHealthServer(srv, h)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return healthpb.NewHealthClient(conn)
}

// rpc is one call of a test and what it must get.
type rpc struct {
	key      []string // the idempotency-key entries sent
	service  string   // the request's payload
	code     codes.Code
	reason   string // the ErrorInfo reason of an error
	retry    bool   // an error with a RetryInfo of at least 1s
	replayed bool
	status   healthpb.HealthCheckResponse_ServingStatus
}

func callRPC(t *testing.T, hc healthpb.HealthClient, i int, c rpc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, k := range c.key {
		ctx = metadata.AppendToOutgoingContext(ctx, idempotency.MetadataKey, k)
	}
	var header metadata.MD
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: c.service}, grpc.Header(&header))
	if st := status.Convert(err); st.Code() != c.code {
		t.Fatalf("call %d: %v, want code %v", i, err, c.code)
	}
	if err != nil {
		st := status.Convert(err)
		var reason string
		var delay time.Duration
		for _, d := range st.Details() {
			switch d := d.(type) {
			case *errdetails.ErrorInfo:
				if d.GetDomain() != idempotency.ErrorDomain {
					t.Fatalf("call %d: ErrorInfo domain %q", i, d.GetDomain())
				}
				reason = d.GetReason()
			case *errdetails.RetryInfo:
				delay = d.GetRetryDelay().AsDuration()
			}
		}
		if reason != c.reason || (delay >= time.Second) != c.retry {
			t.Fatalf("call %d: %v: reason %q, retry delay %v; want reason %q, retry info %t", i, err, reason, delay, c.reason, c.retry)
		}
		return
	}
	if resp.GetStatus() != c.status {
		t.Fatalf("call %d: status %v, want %v", i, resp.GetStatus(), c.status)
	}
	if got := strings.Join(header.Get(idempotency.ReplayedMetadataKey), ","); (got == "true") != c.replayed {
		t.Fatalf("call %d: header %s=%q, want replayed %t", i, idempotency.ReplayedMetadataKey, got, c.replayed)
	}
}

// TestUnaryServerInterceptor sends each case's calls in order through the
// interceptor to a gRPC service on a real sidecar on Redis, and checks
// every answer and how often the method ran.
func TestUnaryServerInterceptor(t *testing.T) {
	const serving, notServing = healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING
	k := []string{"k"}
	cases := []struct {
		name    string
		opts    []idempotency.Option
		respond func(int32) (*healthpb.HealthCheckResponse, error)
		calls   []rpc
		runs    int32
	}{{
		name: "the first call runs once and a duplicate gets its response replayed",
		calls: []rpc{
			{key: k, service: "a", status: serving},
			{key: k, service: "a", status: serving, replayed: true},
			{key: k, service: "a", status: serving, replayed: true},
		},
		runs: 1,
	}, {
		name: "the key reused with another request is refused with FAILED_PRECONDITION",
		calls: []rpc{
			{key: k, service: "a", status: serving},
			{key: k, service: "b", code: codes.FailedPrecondition, reason: idempotency.CodeKeyReused},
		},
		runs: 1,
	}, {
		name: "an error is not stored: the key is released and the retry runs again",
		respond: func(n int32) (*healthpb.HealthCheckResponse, error) {
			if n == 1 {
				return nil, status.Error(codes.Internal, "failed")
			}
			return firstServing(n - 1)
		},
		calls: []rpc{
			{key: k, code: codes.Internal},
			{key: k, status: serving},
			{key: k, status: serving, replayed: true},
		},
		runs: 2,
	}, {
		name: "a call without the entry passes straight through",
		calls: []rpc{
			{status: serving},
			{status: notServing},
		},
		runs: 2,
	}, {
		name: "WithKeyRequired: a call without the entry gets INVALID_ARGUMENT",
		opts: []idempotency.Option{idempotency.WithKeyRequired()},
		calls: []rpc{
			{code: codes.InvalidArgument, reason: idempotency.CodeKeyMissing},
		},
		runs: 0,
	}, {
		name: "an invalid key gets INVALID_ARGUMENT and the method does not run",
		calls: []rpc{
			{key: []string{""}, code: codes.InvalidArgument, reason: idempotency.CodeKeyInvalid},
			{key: []string{strings.Repeat("k", 256)}, code: codes.InvalidArgument, reason: idempotency.CodeKeyInvalid},
			{key: []string{"a", "b"}, code: codes.InvalidArgument, reason: idempotency.CodeKeyInvalid},
			{key: []string{strings.Repeat("k", 255)}, status: serving},
		},
		runs: 1,
	}, {
		name: "WithGRPCMethods: other methods pass straight through",
		opts: []idempotency.Option{idempotency.WithGRPCMethods("/grpc.health.v1.Health/List")},
		calls: []rpc{
			{key: k, status: serving},
			{key: k, status: notServing},
		},
		runs: 2,
	}, {
		name: "WithGRPCMethods: the methods given are covered",
		opts: []idempotency.Option{idempotency.WithGRPCMethods(healthpb.Health_Check_FullMethodName)},
		calls: []rpc{
			{key: k, status: serving},
			{key: k, status: serving, replayed: true},
		},
		runs: 1,
	}}
	client := idemClient(t, sidecarA)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := &healthApp{respond: tc.respond}
			opts := append([]idempotency.Option{idempotency.WithScope(fmt.Sprintf("grpc-test-%d", i))}, tc.opts...)
			hc := serveGRPC(t, client, h, opts...)
			for j, c := range tc.calls {
				callRPC(t, hc, j, c)
			}
			if n := h.runs.Load(); n != tc.runs {
				t.Fatalf("the method ran %d times, want %d", n, tc.runs)
			}
		})
	}
}

// A duplicate that comes while the first call still runs gets ABORTED
// with a RetryInfo; a panic of the method releases the key (the panic
// goes on, here to a recovering interceptor), and a duplicate through a
// second sidecar on the same Redis is replayed.
func TestUnaryServerInterceptorConcurrentPanicAndSecondSidecar(t *testing.T) {
	started, finish := make(chan struct{}), make(chan struct{})
	h := &healthApp{respond: func(n int32) (*healthpb.HealthCheckResponse, error) {
		switch n {
		case 1:
			close(started)
			<-finish
			panic("the method failed")
		}
		return firstServing(n - 1)
	}}
	scope := idempotency.WithScope("grpc-concurrent")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recovering := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = status.Errorf(codes.Internal, "panic: %v", r)
			}
		}()
		return handler(ctx, req)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(recovering, idempotency.UnaryServerInterceptor(idemClient(t, sidecarA), scope)))
	healthpb.RegisterHealthServer(srv, h)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)

	k := []string{"k"}
	first := make(chan error, 1)
	go func() {
		ctx := metadata.AppendToOutgoingContext(context.Background(), idempotency.MetadataKey, "k")
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		first <- err
	}()
	<-started
	callRPC(t, hc, 0, rpc{key: k, code: codes.Aborted, reason: idempotency.CodeKeyInUse, retry: true})
	close(finish)
	if err := <-first; status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "the method failed") {
		t.Fatalf("the panicking call: %v, want the recovered panic", err)
	}
	callRPC(t, hc, 1, rpc{key: k, status: healthpb.HealthCheckResponse_SERVING})
	viaB := serveGRPC(t, idemClient(t, sidecarB), h, scope)
	callRPC(t, viaB, 2, rpc{key: k, status: healthpb.HealthCheckResponse_SERVING, replayed: true})
	if n := h.runs.Load(); n != 2 {
		t.Fatalf("the method ran %d times, want 2 (the panic and the retry)", n)
	}
}

// When the sidecar is stopped, a call with a key gets UNAVAILABLE with a
// RetryInfo and the method does not run.
func TestUnaryServerInterceptorSidecarStopped(t *testing.T) {
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t))
	h := &healthApp{}
	hc := serveGRPC(t, idemClient(t, sc.Addr(), resilience.WithConnectWait(100*time.Millisecond)), h,
		idempotency.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	callRPC(t, hc, 0, rpc{key: []string{"k"}, status: healthpb.HealthCheckResponse_SERVING})
	sc.Kill()
	callRPC(t, hc, 1, rpc{key: []string{"k2"}, code: codes.Unavailable, reason: idempotency.CodeSidecarUnavailable, retry: true})
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("the method ran %d times, want 1: it must not run while the sidecar is away", n)
	}
}
