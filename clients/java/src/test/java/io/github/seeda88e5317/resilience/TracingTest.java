package io.github.seeda88e5317.resilience;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.opentelemetry.api.GlobalOpenTelemetry;
import io.opentelemetry.api.OpenTelemetry;
import io.opentelemetry.api.trace.Span;
import io.opentelemetry.api.trace.Tracer;
import io.opentelemetry.api.trace.propagation.W3CTraceContextPropagator;
import io.opentelemetry.context.Context;
import io.opentelemetry.context.Scope;
import io.opentelemetry.context.propagation.ContextPropagators;
import io.opentelemetry.sdk.trace.ReadWriteSpan;
import io.opentelemetry.sdk.trace.ReadableSpan;
import io.opentelemetry.sdk.trace.SdkTracerProvider;
import io.opentelemetry.sdk.trace.SpanProcessor;
import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * An application traced with OpenTelemetry: its trace reaches the upstream that the sidecar calls
 * for executeCall (the client sends {@code traceparent}, the sidecar carries it on).
 */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class TracingTest {
  static TestUpstream upstream;
  static TestProcesses.Sidecar sidecar;
  SdkTracerProvider tracerProvider;
  Tracer tracer;
  ResilienceClient client;

  @BeforeAll
  static void start(SidecarExtension.Env env) {
    upstream = new TestUpstream();
    sidecar = upstream.startSidecar(env, "tracing");
  }

  @AfterAll
  static void stop() {
    sidecar.close();
    upstream.close();
  }

  @BeforeEach
  void setUp() {
    // What an application's OpenTelemetry setup does: an SDK tracer, the W3C propagator global.
    GlobalOpenTelemetry.resetForTest();
    GlobalOpenTelemetry.set(
        OpenTelemetry.propagating(ContextPropagators.create(W3CTraceContextPropagator.getInstance())));
    tracerProvider = SdkTracerProvider.builder().addSpanProcessor(new Ended()).build();
    tracer = tracerProvider.get("resilience-client-test");
    client = ResilienceClient.builder().environment(Map.of()).address(sidecar.address).build();
  }

  @AfterEach
  void tearDown() {
    client.close();
    tracerProvider.close();
    GlobalOpenTelemetry.resetForTest();
  }

  /** Records the spans the application ended (an SDK without a processor makes no spans). */
  static final class Ended implements SpanProcessor {
    final List<ReadableSpan> spans = new CopyOnWriteArrayList<>();

    @Override
    public void onStart(Context parent, ReadWriteSpan span) {}

    @Override
    public boolean isStartRequired() {
      return false;
    }

    @Override
    public void onEnd(ReadableSpan span) {
      spans.add(span);
    }

    @Override
    public boolean isEndRequired() {
      return true;
    }
  }

  /** The trace id of the traceparent the upstream received on {@code path}, or null. */
  static String traceIdAt(String path) {
    TestUpstream.Request r = upstream.requests(path).get(0);
    String tp = r.header("traceparent");
    if (tp == null) {
      return null;
    }
    String[] parts = tp.split("-");
    assertEquals(4, parts.length, tp);
    return parts[1];
  }

  @Test
  @Tag("scenario:tracing-propagates-traceparent")
  void anUpstreamReachedThroughExecuteCallSitsInTheAppsTrace() throws Exception {
    Span span = tracer.spanBuilder("checkout").startSpan();
    try (Scope ignored = span.makeCurrent()) {
      assertEquals(200, client.executeCall("java-http", UpstreamRequest.get("/echo/traced")).status());
    } finally {
      span.end();
    }
    assertTrue(span.getSpanContext().isValid());
    assertEquals(span.getSpanContext().getTraceId(), traceIdAt("/echo/traced"));

    // Async helpers carry the caller's context into their continuations: the executeCall made
    // inside withLockAsync's function (on a gRPC thread) is in the trace too.
    Span asyncSpan = tracer.spanBuilder("async").startSpan();
    CompletableFuture<UpstreamResponse> f;
    try (Scope ignored = asyncSpan.makeCurrent()) {
      f =
          client.withLockAsync(
              "java/tracing/" + System.nanoTime(),
              (lease, cancelled) ->
                  client.executeCallAsync("java-http", UpstreamRequest.get("/echo/traced-async")));
    }
    assertEquals(200, f.get(10, TimeUnit.SECONDS).status());
    asyncSpan.end();
    assertEquals(asyncSpan.getSpanContext().getTraceId(), traceIdAt("/echo/traced-async"));
    assertFalse(
        asyncSpan.getSpanContext().getTraceId().equals(span.getSpanContext().getTraceId()));
  }

  @Test
  void withoutASpanNoTraceparentIsSent() {
    assertEquals(200, client.executeCall("java-http", UpstreamRequest.get("/echo/untraced")).status());
    assertNull(traceIdAt("/echo/untraced"));

    // Turned off: the span is not propagated.
    try (ResilienceClient quiet =
        ResilienceClient.builder()
            .environment(Map.of())
            .address(sidecar.address)
            .propagateTraceContext(false)
            .build()) {
      Span span = tracer.spanBuilder("quiet").startSpan();
      try (Scope ignored = span.makeCurrent()) {
        quiet.executeCall("java-http", UpstreamRequest.get("/echo/quiet"));
      } finally {
        span.end();
      }
    }
    assertNull(traceIdAt("/echo/quiet"));
  }

  @Test
  void theClientWorksWithoutTheOpenTelemetryApi() throws Exception {
    Path dir = TestProcesses.workDir("no-otel");
    String cp =
        Arrays.stream(TestProcesses.testClassPath().split(File.pathSeparator))
            .filter(e -> !e.contains("opentelemetry"))
            .collect(Collectors.joining(File.pathSeparator));
    ProcessBuilder pb =
        new ProcessBuilder(
                TestProcesses.javaBin(), "-cp", cp, NoTracingProbe.class.getName(), sidecar.address)
            .redirectErrorStream(true)
            .redirectOutput(dir.resolve("output").toFile());
    Process p = TestProcesses.start(pb);
    assertTrue(p.waitFor(30, TimeUnit.SECONDS), "the probe did not finish");
    String out = Files.readString(dir.resolve("output"), UTF_8);
    assertEquals(0, p.exitValue(), out);
    assertTrue(out.contains("opentelemetry=false status=200"), out);
    assertNotNull(upstream.requests("/echo/no-otel").get(0));
  }
}
