package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/httpapi"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
)

// defaultHTTPListen is http_listen's default (internal/config).
const defaultHTTPListen = "127.0.0.1:50080"

// httpFront is the HTTP/JSON API (docs/http.md) on cfg.HTTPListen: every
// annotated unary RPC of srv, transcoded into a call on srv itself, so
// it runs srv's interceptors (auth, limits, metrics, logging, tracing).
type httpFront struct {
	hs   *http.Server
	done chan struct{}
	once sync.Once
	log  *slog.Logger
	// drainTimeout bounds how long stop waits for requests in flight.
	drainTimeout time.Duration
}

// startHTTP listens on cfg.HTTPListen and serves until stop. Call it
// after every service is registered on srv. It returns nil (and no
// error) when the default address is taken.
func startHTTP(cfg *config.Config, srv *server.Server, m *metrics.Metrics, log *slog.Logger) (*httpFront, error) {
	hm, err := httpapi.NewMetrics(m.Registry())
	if err != nil {
		return nil, fmt.Errorf("http_listen: metrics: %w", err)
	}
	h, err := httpapi.New(httpapi.Options{GRPC: srv.GRPC(), MaxBodyBytes: int64(cfg.MaxMessageBytes), Metrics: hm})
	if err != nil {
		return nil, fmt.Errorf("http_listen: %w", err)
	}
	network, address := "tcp", cfg.HTTPListen
	if p, ok := strings.CutPrefix(cfg.HTTPListen, "unix://"); ok {
		network, address = "unix", p
	}
	lis, err := server.Listen(network, address, server.UnixSocket{Mode: cfg.ListenMode, Group: cfg.ListenGroup})
	if err != nil && cfg.HTTPListen == defaultHTTPListen && errors.Is(err, syscall.EADDRINUSE) {
		// The default address is a convenience, and another sidecar on
		// the same host (tests, several apps) may hold it: serve gRPC
		// only. An address that was configured must be served.
		log.Warn("HTTP/JSON API off: its default address is taken by another process; set --http-listen to serve it elsewhere, or \"\" to silence this",
			"address", cfg.HTTPListen)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("http_listen: %w", err)
	}
	f := &httpFront{
		// No write timeout: a call may wait (wait_timeout) for minutes.
		hs:           &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10},
		done:         make(chan struct{}),
		log:          log,
		drainTimeout: cfg.ShutdownTimeout,
	}
	if f.drainTimeout <= 0 {
		f.drainTimeout = 10 * time.Second
	}
	go func() {
		defer close(f.done)
		if err := f.hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server failed", "error", err)
		}
	}()
	log.Info("listening for HTTP/JSON", "network", network, "address", lis.Addr().String(), "routes", len(h.Routes()))
	return f, nil
}

// stop stops accepting requests and waits for those in flight, at most
// the drain timeout, then closes the rest. It is safe to call twice.
func (f *httpFront) stop() {
	if f == nil {
		return
	}
	f.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), f.drainTimeout)
		defer cancel()
		if err := f.hs.Shutdown(ctx); err != nil {
			f.log.Warn("http drain timeout: closing remaining requests", "error", err)
			_ = f.hs.Close()
		}
		<-f.done
	})
}
