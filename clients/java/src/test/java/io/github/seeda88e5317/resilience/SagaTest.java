package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.CompensationStatus;
import io.github.seeda88e5317.resilience.v1.SagaState;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** Saga helpers against the real sidecar, whose compensations call a real HTTP upstream. */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class SagaTest {
  static TestUpstream upstream;
  static TestProcesses.Sidecar sidecar;
  ResilienceClient client;

  @BeforeAll
  static void start(SidecarExtension.Env env) {
    upstream = new TestUpstream();
    sidecar = upstream.startSidecar(env, "sagas");
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

  static String newId() {
    return "java-saga-" + UUID.randomUUID();
  }

  static SagaCompensation undo(String step) {
    return SagaCompensation.post("java-http", "/compensate/" + step).body("undo " + step);
  }

  /** The steps whose compensation reached the upstream for saga {@code id}, in arrival order. */
  static List<String> compensated(String id) {
    List<String> steps = new ArrayList<>();
    for (TestUpstream.Request r : upstream.requests("/compensate/")) {
      String key = r.header("Idempotency-Key");
      if (key != null && key.startsWith(id + ":")) {
        steps.add(key.substring(id.length() + 1));
      }
    }
    return steps;
  }

  @Test
  @Tag("scenario:saga-compensates-in-reverse")
  void aFailingThirdStepAbortsTheSagaAndTheStepsAreCompensatedNewestFirst() {
    String id = newId();
    Saga saga = client.startSaga(id, "checkout", SagaOptions.defaults().timeout(Duration.ofMinutes(1)));
    List<String> done = new ArrayList<>();
    assertEquals("r1", saga.step("step-1", undo("step-1"), () -> { done.add("step-1"); return "r1"; }));
    assertEquals("r2", saga.step("step-2", undo("step-2"), () -> { done.add("step-2"); return "r2"; }));
    IllegalStateException failure = new IllegalStateException("payment declined");
    IllegalStateException thrown =
        assertThrows(
            IllegalStateException.class,
            () -> saga.step("step-3", undo("step-3"), () -> { throw failure; }));
    assertEquals(failure, thrown);
    assertEquals(0, thrown.getSuppressed().length, "the abort failed");
    assertEquals(List.of("step-1", "step-2"), done);

    io.github.seeda88e5317.resilience.v1.Saga end = saga.awaitEnd(Duration.ofSeconds(30));
    assertEquals(SagaState.SAGA_STATE_COMPENSATED, end.getState());
    assertTrue(end.getReason().contains("payment declined"), end.getReason());
    // Step 3 was recorded before it ran (write-ahead), so it is compensated too, first; then
    // step 2, then step 1.
    assertEquals(List.of("step-3", "step-2", "step-1"), compensated(id));
    for (var step : end.getStepsList()) {
      assertEquals(CompensationStatus.COMPENSATION_STATUS_SUCCEEDED, step.getStatus(), step.getStep());
    }
    TestUpstream.Request first =
        upstream.requests("/compensate/step-3").stream()
            .filter(r -> (id + ":step-3").equals(r.header("Idempotency-Key")))
            .findFirst()
            .orElseThrow();
    assertEquals("POST", first.method());
    assertEquals("undo step-3", first.body());
  }

  @Test
  void theCallbackFormCompletesOnReturnAndAbortsOnAnException() {
    String ok = newId();
    int result =
        client.saga(
            ok,
            "ok",
            SagaOptions.defaults().metadata("order", "42"),
            saga -> {
              saga.addCompensation("hold", undo("hold"));
              return saga.step("charge", undo("charge"), () -> 7);
            });
    assertEquals(7, result);
    io.github.seeda88e5317.resilience.v1.Saga done = client.startSaga(ok, "ok").get();
    assertEquals(SagaState.SAGA_STATE_COMPLETED, done.getState());
    assertEquals("42", done.getMetadataOrThrow("order"));
    assertEquals(2, done.getStepCount());

    String failed = newId();
    IllegalStateException e =
        assertThrows(
            IllegalStateException.class,
            () ->
                client.saga(
                    failed,
                    "failed",
                    SagaOptions.defaults(),
                    saga -> {
                      saga.addCompensation("hold", undo("hold"));
                      throw new IllegalStateException("out of stock");
                    }));
    assertEquals("out of stock", e.getMessage());
    Saga again = client.startSaga(failed, "failed");
    assertEquals(SagaState.SAGA_STATE_COMPENSATED, again.awaitEnd(Duration.ofSeconds(30)).getState());
    assertEquals(List.of("hold"), compensated(failed));
    assertEquals(List.of(), compensated(ok));

    // A completed saga cannot be aborted; an unknown one is not found.
    assertThrows(SagaStateConflictException.class, () -> client.startSaga(ok, "ok").abort("late"));
    assertThrows(SagaNotFoundException.class, () -> new Saga(client, newId(), "x").get());
    // A compensation must name a configured upstream; the step is then not run.
    Saga s = client.startSaga(newId(), "bad");
    assertThrows(
        UpstreamUnknownException.class,
        () -> s.step("x", SagaCompensation.post("java-nowhere", "/"), () -> { throw new AssertionError("ran"); }));
  }

  @Test
  void stepAsyncRecordsRunsAndAbortsOnAFailedStage() throws Exception {
    String id = newId();
    Saga saga = client.startSagaAsync(id, "async", SagaOptions.defaults()).get(10, TimeUnit.SECONDS);
    assertEquals(
        "a",
        saga.stepAsync("a", undo("a"), () -> CompletableFuture.supplyAsync(() -> "a"))
            .get(10, TimeUnit.SECONDS));
    ExecutionException e =
        assertThrows(
            ExecutionException.class,
            () ->
                saga.stepAsync(
                        "b",
                        undo("b"),
                        () -> CompletableFuture.<String>failedFuture(new IllegalStateException("b failed")))
                    .get(10, TimeUnit.SECONDS));
    assertInstanceOf(IllegalStateException.class, e.getCause());
    assertEquals(SagaState.SAGA_STATE_COMPENSATED, saga.awaitEnd(Duration.ofSeconds(30)).getState());
    assertEquals(List.of("b", "a"), compensated(id));
  }
}
