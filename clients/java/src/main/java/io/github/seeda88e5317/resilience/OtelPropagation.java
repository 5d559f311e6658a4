package io.github.seeda88e5317.resilience;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.opentelemetry.api.GlobalOpenTelemetry;
import io.opentelemetry.context.Context;
import io.opentelemetry.context.propagation.TextMapSetter;
import java.util.concurrent.Executor;

/**
 * Injects the OpenTelemetry context current when a call is made into its metadata, with the
 * globally configured propagator ({@code GlobalOpenTelemetry.getPropagators()}: W3C {@code
 * traceparent}/{@code tracestate} and baggage in the usual setup; nothing with the no-op default).
 * Loaded only when the OpenTelemetry API is on the class path (see {@link Tracing}).
 */
final class OtelPropagation implements ClientInterceptor {
  private static final TextMapSetter<Metadata> SETTER =
      (carrier, key, value) -> {
        if (carrier != null) {
          Metadata.Key<String> k = Metadata.Key.of(key, Metadata.ASCII_STRING_MARSHALLER);
          carrier.removeAll(k);
          carrier.put(k, value);
        }
      };

  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
      MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
    Context context = Context.current(); // the caller's thread
    return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
      @Override
      public void start(Listener<RespT> listener, Metadata headers) {
        GlobalOpenTelemetry.getPropagators()
            .getTextMapPropagator()
            .inject(context, headers, SETTER);
        super.start(listener, headers);
      }
    };
  }

  static Executor currentContextExecutor() {
    return Context.current().wrap((Executor) Runnable::run);
  }
}
