package io.github.seeda88e5317.resilience;

import io.grpc.ClientInterceptor;
import java.util.concurrent.Executor;

/**
 * OpenTelemetry, when the application has its API on the class path: the interceptor that sends the
 * current trace context ({@code traceparent}) on every call, and executors that carry the caller's
 * context into the continuations of the async helpers. Without the API, neither does anything and
 * no OpenTelemetry class is loaded.
 */
final class Tracing {
  private Tracing() {}

  /** Whether io.opentelemetry:opentelemetry-api is on the class path. */
  static final boolean AVAILABLE = present();

  private static boolean present() {
    try {
      ClassLoader cl = Tracing.class.getClassLoader();
      Class.forName("io.opentelemetry.api.GlobalOpenTelemetry", false, cl);
      Class.forName("io.opentelemetry.context.Context", false, cl);
      return true;
    } catch (ClassNotFoundException | LinkageError e) {
      return false;
    }
  }

  /** The propagating interceptor, or null without OpenTelemetry. */
  static ClientInterceptor interceptor() {
    return AVAILABLE ? new OtelPropagation() : null;
  }

  /**
   * An executor that runs tasks on the calling thread with the current OpenTelemetry context (of
   * the thread calling this method) made current: the async helpers run their continuations
   * through it, so the calls they make carry the caller's trace.
   */
  static Executor currentContextExecutor() {
    return AVAILABLE ? OtelPropagation.currentContextExecutor() : Runnable::run;
  }
}
