package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"go.opentelemetry.io/otel"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The per-call work of the unary path, kept to what a call needs
// (docs/performance.md). A successful call is logged at debug level, so
// at the default level nothing needs building for it; tracing work is done
// only when tracing is on.

// streamLogging writes the same "finished call" record as
// go-grpc-middleware's logging interceptor (which it defers to when debug
// is enabled, as every call is then logged), but builds the record's
// fields only when the call's level is enabled, when the session ends.
func streamLogging(l *slog.Logger, full grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		if l.Enabled(ctx, slog.LevelDebug) {
			return full(srv, ss, info, handler)
		}
		start := time.Now()
		err := handler(srv, ss)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		typ := "bidi_stream"
		switch {
		case info.IsClientStream && !info.IsServerStream:
			typ = "client_stream"
		case !info.IsClientStream && info.IsServerStream:
			typ = "server_stream"
		}
		logFinished(ctx, l, info.FullMethod, typ, start, err)
		return err
	}
}

// logFinished writes go-grpc-middleware's "finished call" record, fields
// in its order, when the level of err's code is enabled.
func logFinished(ctx context.Context, l *slog.Logger, fullMethod, typ string, start time.Time, err error) {
	code := status.Code(err)
	lvl := slog.Level(codeToLevel(code))
	if !l.Enabled(ctx, lvl) {
		return
	}
	service, method := splitMethod(fullMethod)
	attrs := make([]any, 0, 24)
	attrs = append(attrs, "protocol", "grpc", logging.ComponentFieldKey, logging.KindServerFieldValue,
		logging.ServiceFieldKey, service, logging.MethodFieldKey, method, logging.MethodTypeFieldKey, typ)
	if p, ok := peer.FromContext(ctx); ok {
		attrs = append(attrs, "peer.address", p.Addr.String())
	}
	attrs = append(attrs, "grpc.start_time", start.Format(time.RFC3339))
	if d, ok := ctx.Deadline(); ok {
		attrs = append(attrs, "grpc.request.deadline", d.Format(time.RFC3339))
	}
	attrs = append(attrs, "grpc.code", code.String())
	if err != nil {
		attrs = append(attrs, "grpc.error", fmt.Sprintf("%v", err))
	}
	attrs = append(attrs, "grpc.time_ms", fmt.Sprintf("%v", float32(time.Since(start).Nanoseconds()/1000)/1000))
	l.Log(ctx, lvl, "finished call", attrs...)
}

// splitMethod splits "/pkg.Service/Method".
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", "unknown"
}

// Without tracing the server installs no stats handler; these interceptors
// keep what it did for untraced calls: a caller's trace context (W3C
// traceparent and baggage, through the global propagator) continues in the
// call's context, so log records carry the caller's trace_id and upstream
// calls carry its traceparent. A call without those headers costs one
// metadata lookup.

// propagationHeaders are the headers the global propagator reads.
var propagationHeaders = []string{"traceparent", "baggage"}

func extractTraceContext(ctx context.Context) context.Context {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ctx
	}
	for _, h := range propagationHeaders {
		if len(md[h]) > 0 {
			return otel.GetTextMapPropagator().Extract(ctx, metadataCarrier(md))
		}
	}
	return ctx
}

func streamPropagation(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	if traced := extractTraceContext(ctx); traced != ctx {
		ss = &contextStream{ServerStream: ss, ctx: traced}
	}
	return handler(srv, ss)
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// metadataCarrier reads incoming gRPC metadata as a propagation carrier.
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c metadataCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}
