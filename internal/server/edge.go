package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// unaryEdge is every unary interceptor of the server in one: trace context
// (without tracing), metrics, logging, panic recovery, bearer-token auth,
// the max_concurrent_calls admission limit and the rejection of
// undecodable requests, in that order, each doing
// what its go-grpc-middleware counterpart does. One interceptor instead of
// a chain of six keeps a call's stack shallow: a lock waiter is parked on
// that stack for up to minutes, the garbage collector scans it at every
// cycle and counts it in the heap goal, so each frame less is memory less
// per waiter (docs/locks.md).
type unaryEdge struct {
	propagate bool                // extract the caller's trace context (tracing off)
	metrics   *metrics.RPCMetrics // nil: none
	log       *slog.Logger
	debugLog  grpc.UnaryServerInterceptor // go-grpc-middleware's logging, used at debug level
	recovered func(context.Context, any) error
	auth      auth.AuthFunc     // nil: no token required
	limits    *admission.Limits // nil: no admission limits
	held      *heldBytes        // with limits
}

func (e *unaryEdge) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if e.propagate {
		ctx = extractTraceContext(ctx)
	}
	start := time.Now() // one clock read for the metrics and the log record
	var call metrics.UnaryCall
	if e.metrics != nil {
		call = e.metrics.BeginUnary(info.FullMethod, start)
	}
	if e.log.Enabled(ctx, slog.LevelDebug) {
		resp, err = e.debugLog(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return e.handle(ctx, req, info, handler)
		})
	} else {
		resp, err = e.handle(ctx, req, info, handler)
		logFinished(ctx, e.log, info.FullMethod, "unary", start, err)
	}
	if e.metrics != nil {
		e.metrics.EndUnary(call, err)
	}
	return resp, err
}

// handle runs handler with panics recovered, after auth and decoding checks.
func (e *unaryEdge) handle(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			resp, err = nil, e.recovered(ctx, p)
		}
	}()
	if e.auth != nil && methodNeedsAuth(info.FullMethod) {
		if ctx, err = e.auth(ctx); err != nil {
			return nil, err
		}
	}
	if err := undecodable(req); err != nil {
		return nil, err
	}
	if e.limits != nil && methodNeedsAuth(info.FullMethod) {
		// Health and reflection are exempt: probes must answer under load.
		return e.admitted(ctx, req, handler)
	}
	return handler(ctx, req)
}

// admitted runs handler under a max_concurrent_calls slot. Upstream
// response bytes the call kept (ExecuteCall's body) stay reserved until
// the codec has encoded the response and gRPC has written it (heldBytes).
func (e *unaryEdge) admitted(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
	ctx, t, err := e.limits.BeginCall(ctx)
	if err != nil {
		return nil, api.Status(ctx, e.log, err)
	}
	defer t.End()
	resp, err := handler(ctx, req)
	if n := t.TakeBytes(); n > 0 {
		e.held.hold(resp, err, n)
	}
	return resp, err
}
