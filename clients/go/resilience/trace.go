package resilience

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// propagateTraceUnary and propagateTraceStream put the caller's trace
// context (the span in ctx, and baggage) into the call's metadata with the
// propagator the application installed (otel.SetTextMapPropagator): W3C
// traceparent with the usual propagation.TraceContext. The sidecar
// continues the trace, into the upstream request of ExecuteCall too.
// Without an installed propagator, or without
// anything to propagate, the call is left as it is. Only the
// OpenTelemetry API is used: no spans are made here.
func propagateTraceUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(withTraceContext(ctx), method, req, reply, cc, opts...)
}

func propagateTraceStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(withTraceContext(ctx), desc, cc, method, opts...)
}

// withTraceContext returns ctx with the propagator's fields added to its
// outgoing metadata, leaving a field the caller set itself (a gRPC
// instrumentation of its own, say) alone.
func withTraceContext(ctx context.Context) context.Context {
	prop := otel.GetTextMapPropagator()
	if len(prop.Fields()) == 0 { // the default no-op propagator
		return ctx
	}
	carrier := propagation.MapCarrier{}
	prop.Inject(ctx, carrier)
	if len(carrier) == 0 {
		return ctx
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	kv := make([]string, 0, 2*len(carrier))
	for k, v := range carrier {
		if len(md.Get(k)) == 0 {
			kv = append(kv, k, v)
		}
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
