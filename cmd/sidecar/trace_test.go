package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// TestExecuteCallIsOneTrace runs the sidecar's own assembly (serve) with an
// in-memory span exporter: one ExecuteCall must give a server span, store
// spans (a shared breaker's scripts) and the HTTP client span, all in one
// trace, and the upstream must receive that trace in traceparent.
func TestExecuteCallIsOneTrace(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
	})

	var mu sync.Mutex
	var traceparents []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		traceparents = append(traceparents, r.Header.Get("traceparent"))
		mu.Unlock()
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(up.Close)

	rd := testharness.StartRedis(t)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "sidecar.yaml")
	yaml := fmt.Sprintf(`breakers:
  pay: {scope: shared, consecutive_failures: 5, open_duration: 30s}
upstreams:
  pay:
    url: %s
    breaker: pay
    timeout: 2s
`, up.URL)
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testharness.FreeAddr(t)
	cfg, err := config.Load([]string{"--config", cfgFile, "--listen", addr, "--metrics-listen", "", "--redis-url", rd.URL()}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, func(string) string { return "" }, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	waitServing(t, conn)
	exp.Reset()

	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	resp, err := v1.NewBreakerServiceClient(conn).ExecuteCall(cctx, &v1.ExecuteCallRequest{Upstream: "pay", Method: "GET", Path: "/charge"})
	if err != nil || resp.GetStatus() != 200 {
		t.Fatalf("ExecuteCall: %v %v", resp, err)
	}

	// The server span ends after the response is sent: wait for it.
	var spans tracetest.SpanStubs
	var server *tracetest.SpanStub
	testkit.EventuallyNil(t, 10*time.Second, "the server span of ExecuteCall", func() error {
		spans = exp.GetSpans()
		for i := range spans {
			if spans[i].SpanKind == trace.SpanKindServer && strings.HasSuffix(spans[i].Name, "/ExecuteCall") {
				server = &spans[i]
			}
		}
		if server == nil {
			return fmt.Errorf("none among %d spans: %v", len(spans), names(spans))
		}
		return nil
	})
	traceID := server.SpanContext.TraceID()
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
	}
	// underServer reports whether s descends from the server span.
	underServer := func(s tracetest.SpanStub) bool {
		for i := 0; i < 10; i++ {
			p := s.Parent.SpanID()
			if p == server.SpanContext.SpanID() {
				return true
			}
			next, ok := byID[p]
			if !ok {
				return false
			}
			s = next
		}
		return false
	}
	var store, client int
	for _, s := range spans {
		if s.SpanContext.TraceID() != traceID {
			continue
		}
		switch {
		case s.SpanKind == trace.SpanKindClient && strings.HasPrefix(s.Name, "upstream pay"):
			if !underServer(s) {
				t.Errorf("HTTP span %q is not under the server span", s.Name)
			}
			client++
		case s.SpanKind == trace.SpanKindClient && (strings.Contains(s.Name, "evalsha") || strings.Contains(s.Name, "eval")):
			if !underServer(s) {
				t.Errorf("store span %q is not under the server span", s.Name)
			}
			store++
		}
	}
	if store == 0 || client != 1 {
		t.Fatalf("in trace %s: %d store spans, %d HTTP client spans; want >0 and 1; all spans: %v", traceID, store, client, names(spans))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(traceparents) != 1 || !strings.Contains(traceparents[0], traceID.String()) {
		t.Fatalf("upstream saw traceparent %q, want trace %s", traceparents, traceID)
	}
}

func names(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, fmt.Sprintf("%s(%s)", s.Name, s.SpanKind))
	}
	return out
}

func waitServing(t *testing.T, conn *grpc.ClientConn) {
	t.Helper()
	h := healthpb.NewHealthClient(conn)
	testkit.EventuallyNil(t, 20*time.Second, "the sidecar serving", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			err = fmt.Errorf("health %v", r.GetStatus())
		}
		return err
	})
}
