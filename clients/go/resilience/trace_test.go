package resilience_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// An application that uses OpenTelemetry (a W3C propagator installed, a
// span in ctx) reaches an upstream through ExecuteCall: the upstream's
// request carries a traceparent of the application's trace. Without a
// span, or without a propagator, it carries none.
func TestTracePropagatesTraceparent(t *testing.T) {
	scenario(t, "tracing-propagates-traceparent")
	seen := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("traceparent")
	}))
	defer up.Close()
	cfg := configFile(t, fmt.Sprintf("upstreams:\n  traced: {url: %q}\n", up.URL))
	breakers := v1.NewBreakerServiceClient(dial(t, redisSidecars(t, 1, cfg...)[0].Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(ctx context.Context) string {
		t.Helper()
		if _, err := resilience.ExecuteCall(ctx, breakers, "traced", "", "/", nil); err != nil {
			t.Fatal(err)
		}
		return <-seen
	}

	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	spanCtx, span := tp.Tracer("app").Start(ctx, "checkout")
	defer span.End()
	if got := call(spanCtx); got != "" {
		t.Fatalf("traceparent %q reached the upstream without a propagator installed", got)
	}

	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
	got := call(spanCtx)
	parts := strings.Split(got, "-")
	if len(parts) != 4 || parts[1] != span.SpanContext().TraceID().String() {
		t.Fatalf("upstream got traceparent %q; want one of trace %s", got, span.SpanContext().TraceID())
	}
	if got := call(ctx); got != "" {
		t.Fatalf("traceparent %q reached the upstream from a call without a span", got)
	}
}
