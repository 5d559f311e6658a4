// Command sidecar runs the resilience sidecar: distributed locks (and the
// other services) over gRPC, on Redis or on an embedded in-memory store.
//
//	sidecar [flags]          serve (see --help)
//	sidecar inject [flags]   run the Kubernetes sidecar injector webhook
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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/inject"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
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
		return inject.Main(ctx, args[1:], stdout, stderr)
	}
	cfg, err := config.Load(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.SlogLevel()}))
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("sidecar failed", "error", err)
		return 1
	}
	return 0
}

// stores are the capability stores of one backend.
type stores struct {
	lock   lock.Store
	pinger store.Pinger
	close  func() error
}

func openStores(ctx context.Context, cfg *config.Config, log *slog.Logger) (stores, error) {
	if cfg.UsesEmbeddedStore() {
		log.Warn("running on the EMBEDDED IN-MEMORY STORE: state is not shared with other sidecars and is lost on exit; set --redis-url for anything but development")
		m := lock.NewMemoryStore(nil)
		return stores{lock: m, pinger: m, close: func() error { return nil }}, nil
	}
	rdb, err := redisx.NewClient(cfg.RedisURL, redisx.Mode(cfg.RedisMode), cfg.StoreTimeout)
	if err != nil {
		return stores{}, err
	}
	log.Info("using Redis store", "mode", string(cfg.RedisMode), "url", config.RedactURL(cfg.RedisURL))
	// Redis may come up after the sidecar: health stays NOT_SERVING until
	// it answers, and scripts load on first use (EVALSHA falls back to EVAL).
	if err := redisx.LoadScripts(ctx, rdb, lock.Scripts...); err != nil {
		log.Warn("could not preload scripts; Redis unreachable for now", "error", err)
	}
	return stores{
		lock:   lock.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout),
		pinger: redisx.Pinger{Client: rdb, Timeout: cfg.StoreTimeout},
		close:  func() error { return rdb.Close() },
	}, nil
}

func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	log.Info("starting sidecar", "config", cfg)
	st, err := openStores(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer st.close() //nolint:errcheck // closing at exit

	network, address := cfg.ListenNetworkAddress()
	lis, err := server.Listen(network, address)
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
	})
	lockSvc := lock.NewService(st.lock, nil, log)
	v1.RegisterLockServiceServer(srv.GRPC(), api.NewLockServer(srv.Stopping(), lockSvc, log))

	if cfg.MetricsListen != "" {
		stopMetrics, err := serveMetrics(cfg.MetricsListen, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	log.Info("listening", "network", network, "address", lis.Addr().String(), "auth", cfg.APIToken != "")
	return srv.Serve(ctx, lis)
}

// serveMetrics serves Prometheus /metrics until the returned stop is called.
func serveMetrics(addr string, log *slog.Logger) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.Handler())
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
