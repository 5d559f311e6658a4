package tracing_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/seed-a88e5317/resilience-sidecar/internal/tracing"
)

// TestActive: off until tracing is set up or a program installs its own
// global tracer provider (as cmd/sidecar's trace test does).
func TestActive(t *testing.T) {
	if _, on, err := tracing.Setup(context.Background(), func(string) string { return "" }); err != nil || on {
		t.Fatalf("Setup without an endpoint: on=%v err=%v", on, err)
	}
	if tracing.Active() {
		t.Fatal("Active with no endpoint and no provider installed")
	}
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	otel.SetTracerProvider(tp)
	if !tracing.Active() {
		t.Fatal("not Active after a tracer provider was installed")
	}
}
