// Package tracing sets up OpenTelemetry for the sidecar: an OTLP exporter
// when the standard OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT)
// variable is set and none otherwise, W3C trace-context propagation (so
// traces continue into upstream calls), and a slog handler that stamps log
// records with the trace and span ids of their context.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// DefaultServiceName is used when OTEL_SERVICE_NAME is not set.
const DefaultServiceName = "resilience-sidecar"

// Setup installs the global tracer provider and propagator. Tracing is on
// when getenv returns an OTLP endpoint; then spans are batched to it over
// OTLP/gRPC (the exporter reads the other OTEL_EXPORTER_OTLP_* variables
// itself). shutdown flushes and stops the exporter; it is a no-op when
// tracing is off.
func Setup(ctx context.Context, getenv func(string) string) (shutdown func(context.Context) error, enabled bool, err error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return func(context.Context) error { return nil }, false, nil
	}
	exp, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("tracing: otlp exporter: %w", err)
	}
	name := getenv("OTEL_SERVICE_NAME")
	if name == "" {
		name = DefaultServiceName
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(name)))
	if err != nil {
		return nil, false, fmt.Errorf("tracing: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, true, nil
}

// defaultProvider is the global tracer provider before anyone sets one.
var defaultProvider = otel.GetTracerProvider()

// Active reports whether spans may be recorded: Setup turned tracing on,
// or a program (a test) installed its own global tracer provider. When it
// is false the server and the Redis client skip their tracing
// instrumentation altogether, which costs CPU on every call even when the
// spans go nowhere.
func Active() bool {
	tp := reflect.ValueOf(otel.GetTracerProvider())
	def := reflect.ValueOf(defaultProvider)
	if tp.Kind() != reflect.Pointer || def.Kind() != reflect.Pointer {
		return true
	}
	return tp.Pointer() != def.Pointer()
}

// LogHandler wraps h so that records logged with a context carrying a
// span get trace_id and span_id attributes.
func LogHandler(h slog.Handler) slog.Handler { return traceHandler{h} }

type traceHandler struct{ slog.Handler }

func (t traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return t.Handler.Handle(ctx, r)
}

func (t traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceHandler{t.Handler.WithAttrs(as)}
}

func (t traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{t.Handler.WithGroup(name)}
}
