// Package server wires the gRPC server: interceptors (logging, panic
// recovery, bearer-token auth), the health service driven by store probes,
// reflection, message limits, and graceful shutdown.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/tracing"
)

// LivenessService is the health service name that is SERVING for as long
// as the process serves, whatever the store's state (for liveness probes).
const LivenessService = "liveness"

// Options configure a Server. Zero values get the defaults noted.
type Options struct {
	Log *slog.Logger
	// APIToken, when set, is required as "authorization: Bearer <token>" on
	// every call except health and reflection.
	APIToken string
	// MaxMessageBytes bounds received and sent messages (default 4 MiB).
	MaxMessageBytes int
	// ShutdownTimeout bounds draining in-flight calls (default 10s).
	ShutdownTimeout time.Duration
	// Store is probed every HealthInterval (default 1s); health reports
	// NOT_SERVING while it fails: while the store does not answer, and
	// while it answers but refuses writes (full, read-only).
	Store          store.Pinger
	HealthInterval time.Duration
	// Metrics receives per-RPC metrics and the store's up gauge (nil: none).
	Metrics *metrics.Metrics
	// TracerProvider traces every RPC. When nil, RPCs are traced by the
	// global provider if tracing is on (tracing.Active); otherwise no span
	// is made, and a caller's traceparent is only carried in the context.
	TracerProvider trace.TracerProvider
	// Limits are the admission limits (nil: none): unary calls at once,
	// Hold* sessions and Subscribe streams; the services apply the
	// waiter and response-byte limits through the calls' contexts.
	Limits *admission.Limits
	// BeforeDrain, when set, is called once shutdown has begun (health
	// NOT_SERVING, Stopping cancelled) and before gRPC drains: a front
	// that forwards into this server (HTTP/JSON) finishes its requests
	// there, as gRPC's draining would cut them.
	BeforeDrain func()
}

// streamWorkers is how many calls run on reused goroutines at once.
const streamWorkers = 64

// Server is a gRPC server with the sidecar's cross-cutting behaviour.
type Server struct {
	opts     Options
	grpc     *grpc.Server
	health   *health.Server
	stopping context.Context
	stop     context.CancelFunc

	mu      sync.Mutex
	serving bool
}

// New builds a Server. Register services on GRPC() before Serve.
func New(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 4 << 20
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 10 * time.Second
	}
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = time.Second
	}
	s := &Server{opts: opts, health: health.NewServer()}
	s.stopping, s.stop = context.WithCancel(context.Background())

	recovered := func(ctx context.Context, p any) error {
		opts.Log.ErrorContext(ctx, "panic in handler", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	}
	held := &heldBytes{budget: opts.Limits.Budget()}
	unary := &unaryEdge{log: opts.Log, debugLog: loggingMiddleware(opts.Log), recovered: recovered, held: held}
	var stream []grpc.StreamServerInterceptor
	serverOpts := []grpc.ServerOption{
		// Calls run on long-lived workers whose stacks have already grown,
		// instead of a fresh goroutine per call growing (copying) its
		// stack through the interceptors and the store client each time;
		// calls beyond the workers still get their own goroutine.
		grpc.NumStreamWorkers(uint32(streamWorkers)),
		grpc.ForceServerCodecV2(newCodec(held)),
	}
	if opts.TracerProvider != nil || tracing.Active() {
		var otelOpts []otelgrpc.Option
		if opts.TracerProvider != nil {
			otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(opts.TracerProvider))
		}
		serverOpts = append(serverOpts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelOpts...)))
	} else {
		unary.propagate = true
		stream = append(stream, streamPropagation)
	}
	if opts.Metrics != nil {
		unary.metrics = opts.Metrics.GRPC
		stream = append(stream, opts.Metrics.GRPC.StreamServerInterceptor())
	}
	stream = append(stream, streamLogging(opts.Log, logging.StreamServerInterceptor(interceptorLogger(opts.Log), logOptions()...)),
		recovery.StreamServerInterceptor(recovery.WithRecoveryHandlerContext(recovered)))
	if opts.APIToken != "" {
		check := bearerAuth(opts.APIToken)
		unary.auth = check
		stream = append(stream, selector.StreamServerInterceptor(auth.StreamServerInterceptor(check), selector.MatchFunc(needsAuth)))
	}
	if opts.Limits != nil {
		unary.limits = opts.Limits
		stream = append(stream, streamLimits(opts.Limits, opts.Log))
	}
	// Innermost: a request that did not decode is INVALID_ARGUMENT (codec.go).
	stream = append(stream, rejectUndecodableStream)
	s.grpc = grpc.NewServer(append(serverOpts,
		grpc.UnaryInterceptor(unary.intercept),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.MaxSendMsgSize(opts.MaxMessageBytes),
		// Detect vanished HoldLock clients on half-open connections.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)...)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	// "liveness" reports only that the process serves: a store outage makes
	// the sidecar unready ("" and every service NOT_SERVING) but restarting
	// it would not bring the store back.
	s.health.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)
	return s
}

// GRPC is the underlying server, for registering services.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Stopping is cancelled when shutdown begins, before in-flight calls are
// drained: long waits and sessions watch it to end promptly.
func (s *Server) Stopping() context.Context { return s.stopping }

// Serve serves on lis until ctx is cancelled, then shuts down gracefully:
// health turns NOT_SERVING, Stopping is cancelled (sessions release their
// locks), in-flight calls drain for at most ShutdownTimeout, then the rest
// are cut. It returns nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	probeCtx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan struct{})
	s.probe(probeCtx) // first verdict before accepting calls
	go func() {
		defer close(probeDone)
		s.probeLoop(probeCtx)
	}()
	defer func() { stopProbe(); <-probeDone }()

	if s.opts.Metrics != nil {
		// Every registered RPC's series exist from the start, at zero.
		s.opts.Metrics.GRPC.InitializeMetrics(s.grpc)
	}
	served := make(chan error, 1)
	go func() { served <- s.grpc.Serve(lis) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	s.opts.Log.Info("shutting down", "drain_timeout", s.opts.ShutdownTimeout.String())
	stopProbe()
	<-probeDone
	s.health.Shutdown() // NOT_SERVING for everything, and it stays so
	s.stop()
	if s.opts.BeforeDrain != nil {
		s.opts.BeforeDrain()
	}
	drained := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(s.opts.ShutdownTimeout):
		s.opts.Log.Warn("drain timeout: cutting remaining calls")
		s.grpc.Stop()
		<-drained
	}
	<-served
	s.opts.Log.Info("stopped")
	return nil
}

func (s *Server) probeLoop(ctx context.Context) {
	t := time.NewTicker(s.opts.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.probe(ctx)
		}
	}
}

// probe sets every service's health from one store ping.
func (s *Server) probe(ctx context.Context) {
	ok := true
	if s.opts.Store != nil {
		if err := s.opts.Store.Ping(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			ok = false
			s.mu.Lock()
			was := s.serving
			s.mu.Unlock()
			if was {
				s.opts.Log.Error(storeDownMessage(err), "error", err)
			}
		}
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.opts.Metrics.SetStoreUp(ok)
	s.mu.Lock()
	changed := s.serving != ok
	s.serving = ok
	s.mu.Unlock()
	if changed && ok {
		s.opts.Log.Info("store reachable: health is SERVING")
	}
	s.health.SetServingStatus("", st)
	for name := range s.grpc.GetServiceInfo() {
		s.health.SetServingStatus(name, st)
	}
}

// storeDownMessage says why a failed probe made health NOT_SERVING.
func storeDownMessage(err error) string {
	switch {
	case errors.Is(err, store.ErrFull):
		return "store full (out of memory, writes refused): health is NOT_SERVING"
	case errors.Is(err, store.ErrReadOnly):
		return "store read-only (writes refused): health is NOT_SERVING"
	case errors.Is(err, store.ErrNotReplicated):
		return "store lacks replicas (writes refused): health is NOT_SERVING"
	}
	return "store unreachable: health is NOT_SERVING"
}

// needsAuth exempts health checks and reflection, which probes and tools
// call without credentials.
func needsAuth(_ context.Context, c interceptors.CallMeta) bool {
	return serviceNeedsAuth(c.Service)
}

// methodNeedsAuth is needsAuth for "/service/method".
func methodNeedsAuth(fullMethod string) bool {
	service, _ := splitMethod(fullMethod)
	return serviceNeedsAuth(service)
}

func serviceNeedsAuth(service string) bool {
	return service != healthpb.Health_ServiceDesc.ServiceName && !strings.HasPrefix(service, "grpc.reflection.")
}

func bearerAuth(token string) auth.AuthFunc {
	want := sha256.Sum256([]byte(token))
	return func(ctx context.Context) (context.Context, error) {
		got, err := auth.AuthFromMD(ctx, "bearer")
		if err != nil {
			return nil, err
		}
		// Comparing digests keeps the comparison constant-time regardless
		// of the presented token's length.
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			return nil, status.Error(codes.Unauthenticated, "invalid bearer token")
		}
		return ctx, nil
	}
}

func codeToLevel(c codes.Code) logging.Level {
	switch c {
	case codes.OK, codes.Canceled:
		return logging.LevelDebug
	case codes.Unknown, codes.Internal, codes.DataLoss:
		return logging.LevelError
	case codes.Unavailable, codes.DeadlineExceeded:
		return logging.LevelWarn
	default:
		return logging.LevelInfo
	}
}

// logOptions: one record when a call finishes, at its code's level.
func logOptions() []logging.Option {
	return []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(codeToLevel),
	}
}

// loggingMiddleware is go-grpc-middleware's unary logging interceptor.
func loggingMiddleware(l *slog.Logger) grpc.UnaryServerInterceptor {
	return logging.UnaryServerInterceptor(interceptorLogger(l), logOptions()...)
}

func interceptorLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}

// Listen opens the listener for addr: "host:port" or "unix:///path". A
// stale unix socket file is replaced. A unix socket is made as sock says
// (by default 0600: only this process's user may connect), before it
// accepts anything from anyone else (listenUnix).
func Listen(network, address string, sock UnixSocket) (net.Listener, error) {
	if network == "unix" {
		return listenUnix(address, sock)
	}
	return net.Listen(network, address)
}

// removeStaleSocket removes a socket file nobody listens on. It refuses to
// remove anything else, or a socket another process still serves.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("listen: %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("listen: %s: another process is serving on this socket", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen: remove stale socket: %w", err)
	}
	return nil
}
