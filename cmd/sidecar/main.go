// Command sidecar runs the resilience sidecar: distributed locks (and the
// other services) over gRPC, on Redis or on an embedded in-memory store.
//
//	sidecar [flags]          serve (see --help)
//	sidecar --version        print the release (VERSION) and exit
//
// The Kubernetes injector webhook is the separate command sidecar-injector.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/redis/go-redis/extra/redisotel/v9"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/tracing"
	"github.com/seed-a88e5317/resilience-sidecar/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it returns the exit code (2 for bad
// configuration, 1 for a failure at run time).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "inject" {
		// The injector left this binary so that sidecars do not carry the
		// Kubernetes API types (idle memory, docs/performance.md).
		fmt.Fprintln(stderr, "sidecar: the injector is the command sidecar-injector (same image: /sidecar-injector); 'sidecar inject' is gone")
		return 2
	}
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		fmt.Fprintln(stdout, "sidecar", version.Number)
		return 0
	}
	cfg, err := config.Load(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	log := slog.New(tracing.LogHandler(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.SlogLevel()})))
	redisx.SetLogger(log) // go-redis's own messages as JSON records too
	if err := serve(ctx, cfg, getenv, log); err != nil {
		log.Error("sidecar failed", "error", err)
		return 1
	}
	return 0
}

// stores are the capability stores of one backend.
type stores struct {
	lock        lock.Store
	idempotency idempotency.Store
	clock       clock.Store
	breaker     breaker.Store // nil on the embedded store: shared breakers run locally
	saga        saga.Store
	events      events.Store
	semaphore   semaphore.Store // nil on the embedded store: serveSemaphores makes one
	ratelimit   ratelimit.Store
	pinger      store.Pinger
	close       func() error
}

func openStores(ctx context.Context, cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (stores, error) {
	if cfg.UsesEmbeddedStore() {
		log.Warn("running on the EMBEDDED IN-MEMORY STORE: state is not shared with other sidecars and is lost on exit; set --redis-url for anything but development")
		if cfg.RedisWaitReplicas > 0 {
			log.Warn("redis_wait_replicas is ignored on the embedded store, which has no replicas")
		}
		m := lock.NewMemoryStore(nil)
		return stores{lock: m, idempotency: idempotency.NewMemoryStore(nil), clock: clock.NewMemoryStore(), saga: saga.NewMemoryStore(nil), events: events.NewMemoryStore(nil),
			ratelimit: ratelimit.NewMemoryStore(nil), pinger: m, close: func() error { return nil }}, nil
	}
	rdb, err := redisx.NewClient(cfg.RedisURL, cfg.RedisMode, cfg.StoreTimeout)
	if err != nil {
		return stores{}, err
	}
	log.Info("using Redis store", "mode", string(cfg.RedisMode), "url", config.RedactURL(cfg.RedisURL))
	redisx.Instrument(rdb, m.ObserveStore)
	// Spans per command only when they can be recorded: the hook costs
	// CPU on every command even when they go nowhere.
	if tracing.Active() {
		if err := redisotel.InstrumentTracing(rdb, redisotel.WithDBStatement(false)); err != nil {
			return stores{}, fmt.Errorf("redis tracing: %w", err)
		}
	}
	if cfg.RedisPipeline { // last hook: the ones above still see every script
		redisx.AutoPipeline(rdb, 0, 0)
	}
	// Redis may come up after the sidecar: health stays NOT_SERVING until
	// it answers, and scripts load on first use (EVALSHA falls back to EVAL).
	if err := redisx.LoadScripts(ctx, rdb, slices.Concat(lock.Scripts, idempotency.Scripts, clock.Scripts, breaker.Scripts, saga.Scripts, events.Scripts, ratelimit.Scripts, semaphore.Scripts)...); err != nil {
		log.Warn("could not preload scripts; Redis unreachable for now", "error", err)
	}
	// Grants and the records clients rely on wait for replicas when asked
	// to, so that a failover does not lose them (docs/topologies.md).
	wait, closeFence, err := replicationWait(cfg)
	if err != nil {
		return stores{}, err
	}
	if wait.All || wait.Replicas > 0 {
		log.Info("grants and records wait for replicas", "replicas", cfg.RedisWaitReplicas, "all", wait.All,
			"min_replicas", wait.Min, "sentinel_fence", wait.Fence != nil, "timeout", wait.Timeout.String())
	}
	return stores{
		lock:        lock.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout, lock.WithWait(wait)),
		idempotency: idempotency.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout, idempotency.WithWait(wait)),
		clock:       clock.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout),
		breaker:     breaker.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout),
		saga:        saga.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout, saga.WithWait(wait)),
		events:      newRedisEvents(cfg, rdb, wait, log),
		ratelimit:   ratelimit.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout),
		semaphore:   semaphore.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout, semaphore.WithWait(wait)),
		pinger:      redisx.Pinger{Client: rdb, Timeout: cfg.StoreTimeout},
		close:       func() error { return errors.Join(closeFence(), rdb.Close()) },
	}, nil
}

// replicationWait is the Wait of cfg's redis_wait_* settings, and what
// closes its Sentinel fence.
func replicationWait(cfg *config.Config) (redisx.Wait, func() error, error) {
	none := func() error { return nil }
	if cfg.RedisWaitReplicas != config.WaitAll {
		return redisx.Wait{Replicas: cfg.RedisWaitReplicas, Timeout: cfg.RedisWaitTimeout}, none, nil
	}
	w := redisx.Wait{All: true, Min: cfg.RedisWaitMinReplicas, Timeout: cfg.RedisWaitTimeout}
	if cfg.RedisMode != redisx.Sentinel {
		return w, none, nil
	}
	fence, err := redisx.NewSentinelFence(cfg.RedisURL, cfg.RedisWaitTimeout)
	if err != nil {
		return redisx.Wait{}, nil, err
	}
	w.Fence = fence
	return w, fence.Close, nil
}

func serve(ctx context.Context, cfg *config.Config, getenv func(string) string, log *slog.Logger) error {
	log.Info("starting sidecar", "version", version.Number, "config", cfg)
	shutdownTracing, tracingOn, err := tracing.Setup(ctx, getenv)
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdownTracing(fctx); err != nil {
			log.Warn("flushing traces failed", "error", err)
		}
	}()
	log.Info("tracing", "otlp", tracingOn)
	m := metrics.New()
	st, err := openStores(ctx, cfg, m, log)
	if err != nil {
		return err
	}
	defer st.close() //nolint:errcheck // closing at exit

	limits := admission.New(admission.Config{Calls: cfg.MaxConcurrentCalls, Waiters: cfg.MaxWaiters, Sessions: cfg.MaxSessions,
		Subscriptions: cfg.MaxSubscriptions, ResponseBytes: int64(cfg.MaxResponseBytesInFlight)}, m)
	var front *httpFront // the HTTP/JSON API, drained before gRPC (it calls into it)
	network, address := cfg.ListenNetworkAddress()
	lis, err := server.Listen(network, address, server.UnixSocket{Mode: cfg.ListenMode, Group: cfg.ListenGroup})
	if err != nil {
		return err
	}
	srv := server.New(server.Options{
		Log:             log,
		APIToken:        cfg.APIToken,
		MaxMessageBytes: cfg.MaxMessageBytes,
		ShutdownTimeout: cfg.ShutdownTimeout,
		Store:           st.pinger,
		HealthInterval:  cfg.HealthInterval,
		Metrics:         m,
		Limits:          limits,
		BeforeDrain:     func() { front.stop() },
	})
	lockSvc := lock.NewService(st.lock, nil, log)
	defer lockSvc.Close()
	v1.RegisterLockServiceServer(srv.GRPC(), api.NewLockServer(srv.Stopping(), lockSvc, log, api.WithMetrics(m)))
	defer serveSemaphores(srv, srv.Stopping(), st.semaphore, m, log)()
	idemSvc := idempotency.NewService(st.idempotency, nil, log)
	defer idemSvc.Close()
	v1.RegisterIdempotencyServiceServer(srv.GRPC(), api.NewIdempotencyServer(srv.Stopping(), idemSvc, log, cfg.MaxResultBytes, api.WithMetrics(m)))
	clockSvc := clock.NewService(st.clock, 0, log)
	v1.RegisterClockServiceServer(srv.GRPC(), api.NewClockServer(clockSvc, clock.NewHLC(nil, cfg.MaxOffset), clock.NewULIDs(nil, nil), log, api.WithMetrics(m)))
	brkSvc, upstreams, err := newBreakers(cfg, st.breaker, limits.Budget(), m, log)
	if err != nil {
		return err
	}
	defer brkSvc.Close()
	defer upstreams.Close()
	v1.RegisterBreakerServiceServer(srv.GRPC(), api.NewBreakerServer(brkSvc, upstreams, log))
	sagaSvc, err := newSagas(cfg, st, upstreams, m, log)
	if err != nil {
		return err
	}
	defer sagaSvc.Close()
	v1.RegisterSagaServiceServer(srv.GRPC(), api.NewSagaServer(sagaSvc, log))
	eventSvc, stopEvents := newEvents(cfg, st, upstreams, m, log)
	defer stopEvents()
	outboxStatus, stopOutbox, err := startOutbox(ctx, cfg, eventSvc, m, log)
	if err != nil {
		return err
	}
	defer stopOutbox() // before stopEvents: the relay publishes through eventSvc
	v1.RegisterEventServiceServer(srv.GRPC(), api.NewEventServer(srv.Stopping(), eventSvc, outboxStatus, log))
	if err := registerRateLimits(srv.GRPC(), cfg, st.ratelimit, m, log); err != nil {
		return err
	}

	if cfg.HTTPListen != "" {
		if front, err = startHTTP(cfg, srv, m, log); err != nil {
			return err
		}
		defer front.stop() // nil-safe
	}

	if cfg.MetricsListen != "" {
		stopMetrics, err := serveMetrics(cfg.MetricsListen, m.Handler(), log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	if cfg.DebugListen != "" {
		stopDebug, err := serveDebug(cfg.DebugListen, log)
		if err != nil {
			return err
		}
		defer stopDebug()
	}
	log.Info("listening", "network", network, "address", lis.Addr().String(), "auth", cfg.APIToken != "")
	return srv.Serve(ctx, lis)
}

// serveMetrics serves Prometheus /metrics until the returned stop is called.
func serveMetrics(addr string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "error", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-done
	}, nil
}
