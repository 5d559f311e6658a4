package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.BreakerState;
import io.github.seeda88e5317.resilience.v1.CallOutcome;
import io.github.seeda88e5317.resilience.v1.GetBreakerRequest;
import io.github.seeda88e5317.resilience.v1.ReportCallRequest;
import io.grpc.Status;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** BreakerGuard and executeCall against the real sidecar, with a real HTTP upstream. */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class BreakerTest {
  static TestUpstream upstream;
  static TestProcesses.Sidecar sidecar;
  ResilienceClient client;

  @BeforeAll
  static void start(SidecarExtension.Env env) {
    upstream = new TestUpstream();
    sidecar = upstream.startSidecar(env, "breakers");
  }

  @AfterAll
  static void stop() {
    sidecar.close();
    upstream.close();
  }

  @BeforeEach
  void connect() {
    client = ResilienceClient.builder().environment(Map.of()).address(sidecar.address).build();
  }

  @AfterEach
  void close() {
    client.close();
  }

  BreakerState state(String breaker) {
    return client
        .breakers()
        .getBreaker(GetBreakerRequest.newBuilder().setBreaker(breaker).build())
        .getBreaker()
        .getState();
  }

  @Test
  @Tag("scenario:breaker-guard-opens-and-recovers")
  void aGuardOpensTheBreakerOnFailuresAndASuccessAfterTheOpenDurationClosesIt() {
    BreakerGuard guard = client.breaker("java-guard"); // 3 failures in a row open it for 1 s
    AtomicInteger calls = new AtomicInteger();
    Supplier<String> failing =
        guard.decorateSupplier(
            () -> {
              calls.incrementAndGet();
              throw new IllegalStateException("dependency down");
            });
    for (int i = 0; i < 3; i++) {
      assertThrows(IllegalStateException.class, failing::get);
    }
    assertEquals(3, calls.get());
    assertEquals(BreakerState.BREAKER_STATE_OPEN, state("java-guard"));

    BreakerOpenException open = assertThrows(BreakerOpenException.class, failing::get);
    assertEquals(3, calls.get(), "the guarded function ran while the breaker was open");
    assertEquals(Status.Code.UNAVAILABLE, open.code());
    assertEquals(Reasons.BREAKER_OPEN, open.reason());
    assertEquals("java-guard", open.breaker());
    assertTrue(
        open.retryDelay().compareTo(Duration.ZERO) > 0
            && open.retryDelay().compareTo(Duration.ofSeconds(1)) <= 0,
        "retry delay " + open.retryDelay());

    // real time: the breaker's open duration must pass before it admits a probe
    TestProcesses.sleep(open.retryDelay().toMillis() + 50);
    assertEquals("recovered", guard.executeSupplier(() -> "recovered"));
    assertEquals(BreakerState.BREAKER_STATE_CLOSED, state("java-guard"));
  }

  @Test
  void ignoredExceptionsDoNotCountAndTheTwoStepsWorkOnTheirOwn() throws Exception {
    BreakerGuard guard =
        client.breaker(
            "java-ignore",
            BreakerOptions.defaults()
                .permitTtl(Duration.ofSeconds(5))
                .ignoreExceptions(IllegalArgumentException.class));
    for (int i = 0; i < 6; i++) { // the default policy opens after 5 failures
      assertThrows(
          IllegalArgumentException.class,
          () ->
              guard.executeCallable(
                  () -> {
                    throw new IllegalArgumentException("bad input, not the dependency's fault");
                  }));
    }
    assertEquals(BreakerState.BREAKER_STATE_CLOSED, state("java-ignore"));

    BreakerGuard.Permit permit = guard.acquirePermit();
    assertEquals(BreakerState.BREAKER_STATE_CLOSED, permit.state());
    permit.onSuccess();
    permit.onFailure(); // a second report is not sent: every permit counts once
    var counts =
        client
            .breakers()
            .getBreaker(GetBreakerRequest.newBuilder().setBreaker("java-ignore").build())
            .getBreaker()
            .getCounts();
    assertEquals(0, counts.getFailures());
    assertEquals(0, counts.getOutstandingPermits());

    // Reporting that permit again through the raw stub: the sidecar knows it no more.
    PermitUnknownException unknown =
        assertThrows(
            PermitUnknownException.class,
            () -> {
              try {
                client
                    .breakers()
                    .reportCall(
                        ReportCallRequest.newBuilder()
                            .setPermitId(permit.id())
                            .setOutcome(CallOutcome.CALL_OUTCOME_SUCCESS)
                            .build());
              } catch (io.grpc.StatusRuntimeException e) {
                throw SidecarException.from(e);
              }
            });
    assertEquals(Reasons.PERMIT_UNKNOWN, unknown.reason());
  }

  @Test
  void executeAsyncReportsTheStagesOutcome() throws Exception {
    BreakerGuard guard = client.breaker("java-async"); // default policy: 5 failures
    assertEquals(
        42, guard.executeAsync(() -> CompletableFuture.supplyAsync(() -> 42)).get(10, TimeUnit.SECONDS));
    ExecutionException e =
        assertThrows(
            ExecutionException.class,
            () ->
                guard
                    .executeAsync(
                        () ->
                            CompletableFuture.<Integer>failedFuture(
                                new IllegalStateException("async failure")))
                    .get(10, TimeUnit.SECONDS));
    assertInstanceOf(IllegalStateException.class, e.getCause());
    var counts =
        client
            .breakers()
            .getBreaker(GetBreakerRequest.newBuilder().setBreaker("java-async").build())
            .getBreaker()
            .getCounts();
    assertEquals(1, counts.getConsecutiveFailures());
    assertEquals(2, counts.getCalls());
  }

  @Test
  @Tag("scenario:execute-call")
  void executeCallReturnsTheUpstreamsStatusHeadersAndBody() throws Exception {
    UpstreamResponse r =
        client.executeCall(
            "java-http",
            UpstreamRequest.post("/echo/charge")
                .query("order=42")
                .header("content-type", "text/plain")
                .body("amount=4200")
                .idempotencyKey("order-42")
                .timeout(Duration.ofSeconds(5)));
    assertEquals(200, r.status());
    assertEquals("POST /echo/charge amount=4200", r.bodyAsString());
    assertEquals("test", r.header("X-Upstream"));
    assertEquals(1, r.attempts());
    assertEquals(BreakerState.BREAKER_STATE_CLOSED, r.breakerState());
    TestUpstream.Request got = upstream.requests("/echo/charge").get(0);
    assertEquals("order-42", got.header("Idempotency-Key"));
    assertEquals("text/plain", got.header("Content-Type"));

    // Any HTTP status is a result, not an exception.
    assertEquals(404, client.executeCall("java-http", UpstreamRequest.get("/status/404")).status());

    UpstreamResponse async =
        client
            .executeCallAsync("java-http", UpstreamRequest.get("/echo/async"))
            .get(10, TimeUnit.SECONDS);
    assertEquals("GET /echo/async ", async.bodyAsString());
  }

  @Test
  void executeCallErrorsAreTyped() {
    UpstreamUnknownException unknown =
        assertThrows(
            UpstreamUnknownException.class,
            () -> client.executeCall("java-nowhere", UpstreamRequest.get("/")));
    assertEquals(Status.Code.INVALID_ARGUMENT, unknown.code());
    assertInstanceOf(InvalidArgumentException.class, unknown, "still an INVALID_ARGUMENT");
    assertTrue(unknown.violations().containsKey("upstream"), unknown.violations().toString());
    assertThrows(
        UpstreamUnknownException.class,
        () -> client.executeCall("java-http", UpstreamRequest.get("/../outside")));

    UpstreamUnavailableException down =
        assertThrows(
            UpstreamUnavailableException.class,
            () -> client.executeCall("java-dead", UpstreamRequest.get("/")));
    assertEquals(Reasons.UPSTREAM_UNAVAILABLE, down.reason());

    UpstreamTimeoutException slow =
        assertThrows(
            UpstreamTimeoutException.class,
            () ->
                client.executeCall(
                    "java-http", UpstreamRequest.get("/slow").timeout(Duration.ofMillis(300))));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, slow.code());

    // The upstream's own breaker: two 503s open it; the next call is refused without a request.
    for (int i = 0; i < 2; i++) {
      assertEquals(503, client.executeCall("java-flaky", UpstreamRequest.get("/status/503")).status());
    }
    int before = upstream.requests("/status/503").size();
    BreakerOpenException open =
        assertThrows(
            BreakerOpenException.class,
            () -> client.executeCall("java-flaky", UpstreamRequest.get("/status/503")));
    assertEquals("java-flaky", open.breaker());
    assertTrue(open.retryDelay().compareTo(Duration.ofSeconds(20)) > 0, "" + open.retryDelay());
    assertEquals(before, upstream.requests("/status/503").size(), "a request passed an open breaker");
  }
}
