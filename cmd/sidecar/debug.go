package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"
)

// serveDebug serves net/http/pprof under /debug/pprof/ on addr (host:port,
// or unix:///absolute/path) until the returned stop is called: the
// debug_listen setting (--debug-listen), off unless set. Only the pprof
// handlers are served, on a mux of their own, never on the metrics or API
// listeners; profiles expose the process's internals, so bind it to
// localhost or a socket only operators reach.
func serveDebug(addr string, log *slog.Logger) (stop func(), err error) {
	network, address := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, address = "unix", p
		_ = os.Remove(p) // a socket left by a previous run
	}
	lis, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("debug_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	// A CPU profile or trace streams for its ?seconds= (30 by default).
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("debug server failed", "error", err)
		}
	}()
	log.Info("serving net/http/pprof", "address", lis.Addr().String())
	return func() {
		_ = hs.Close() // a profile in progress is cut short, not waited for
		<-done
	}, nil
}
