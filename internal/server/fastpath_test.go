package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestPropagationWithoutTracing: with tracing off, a caller's traceparent
// still becomes the call's span context (so logs carry its trace_id), and
// a call without one is left alone.
func TestPropagationWithoutTracing(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	var got trace.SpanContext
	h := func(ctx context.Context, _ any) (any, error) {
		got = trace.SpanContextFromContext(ctx)
		return nil, nil
	}
	e := testEdge(slog.New(slog.DiscardHandler))
	e.propagate = true
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", tp))
	_, _ = e.intercept(ctx, nil, &grpc.UnaryServerInfo{}, h)
	if got.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !got.IsRemote() {
		t.Fatalf("span context %v, want the caller's trace", got)
	}
	_, _ = e.intercept(metadata.NewIncomingContext(context.Background(), metadata.MD{}), nil, &grpc.UnaryServerInfo{}, h)
	if got.IsValid() {
		t.Fatalf("span context %v without traceparent", got)
	}
}

// TestUnaryLoggingLevels: at info level a successful call writes nothing
// and a failed one writes the middleware's "finished call" record; at debug
// level every call is logged (by the middleware).
func TestUnaryLoggingLevels(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/resilience.v1.LockService/AcquireLock"}
	ok := func(context.Context, any) (any, error) { return "ok", nil }
	bad := func(context.Context, any) (any, error) { return nil, status.Error(codes.InvalidArgument, "no key") }
	for _, tc := range []struct {
		level   slog.Level
		handler grpc.UnaryHandler
		want    int
	}{
		{slog.LevelInfo, ok, 0},
		{slog.LevelInfo, bad, 1},
		{slog.LevelDebug, ok, 1},
		{slog.LevelDebug, bad, 1},
	} {
		var buf bytes.Buffer
		l := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: tc.level}))
		_, _ = testEdge(l).intercept(context.Background(), nil, info, tc.handler)
		lines := bytes.Count(buf.Bytes(), []byte("\n"))
		if lines != tc.want {
			t.Fatalf("level %v: %d records, want %d: %s", tc.level, lines, tc.want, buf.String())
		}
		if lines == 0 {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"grpc.service", "grpc.method", "grpc.method_type", "grpc.code", "grpc.time_ms", "grpc.start_time", "protocol", "grpc.component"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("level %v: record lacks %q: %v", tc.level, k, rec)
			}
		}
		if rec["msg"] != "finished call" || rec["grpc.method"] != "AcquireLock" {
			t.Errorf("record %v", rec)
		}
	}
}

// testEdge is the server's unary interceptor logging to l, without
// metrics, trace propagation or auth.
func testEdge(l *slog.Logger) *unaryEdge {
	return &unaryEdge{log: l, debugLog: loggingMiddleware(l), recovered: func(context.Context, any) error {
		return status.Error(codes.Internal, "internal error")
	}}
}
