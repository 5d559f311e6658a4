package io.github.seeda88e5317.resilience;

import java.util.Map;

/**
 * Run by {@link TracingTest} in a JVM without the OpenTelemetry API on its class path: the client
 * must work there (the dependency is optional). Args: the sidecar address.
 */
public final class NoTracingProbe {
  private NoTracingProbe() {}

  public static void main(String[] args) {
    try (ResilienceClient client =
        ResilienceClient.builder().environment(Map.of()).address(args[0]).build()) {
      UpstreamResponse r = client.executeCall("java-http", UpstreamRequest.get("/echo/no-otel"));
      System.out.println("opentelemetry=" + Tracing.AVAILABLE + " status=" + r.status());
    }
  }
}
