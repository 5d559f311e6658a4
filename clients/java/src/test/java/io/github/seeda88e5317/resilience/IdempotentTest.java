package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.GetIdempotencyRequest;
import io.github.seeda88e5317.resilience.v1.GetIdempotencyResponse;
import io.grpc.Status;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

@ExtendWith(SidecarExtension.class)
@Timeout(60)
class IdempotentTest {
  ResilienceClient client;

  @BeforeEach
  void connect(SidecarExtension.Env env) {
    client = env.client();
  }

  @AfterEach
  void close() {
    client.close();
  }

  /** Runs {@code call} on another thread; a checked exception fails the future as it is. */
  static <T> CompletableFuture<T> async(Callable<T> call) {
    CompletableFuture<T> f = new CompletableFuture<>();
    Thread t =
        new Thread(
            () -> {
              try {
                f.complete(call.call());
              } catch (Throwable e) {
                f.completeExceptionally(e);
              }
            });
    t.setDaemon(true);
    t.start();
    return f;
  }

  static String key(String name) {
    return "java/idem/" + name + "/" + System.nanoTime();
  }

  @Test
  void duplicatesGetTheStoredResultWithoutRunningAgain() {
    String key = key("dup");
    String fp = ResilienceClient.fingerprint("{\"amount\":100}");
    AtomicInteger runs = new AtomicInteger();
    List<IdempotentResult> results = new ArrayList<>();
    for (int i = 0; i < 3; i++) {
      results.add(
          client.idempotent(
              key,
              fp,
              () -> {
                int n = runs.incrementAndGet();
                return IdempotentResult.ofString("charge-" + n, Map.of("status", "201"));
              }));
    }
    assertEquals(1, runs.get(), "the operation ran more than once");
    for (IdempotentResult r : results) {
      assertEquals("charge-1", r.dataAsString());
      assertEquals(Map.of("status", "201"), r.metadata());
      assertEquals(results.get(0), r);
    }
  }

  @Test
  @Tag("scenario:idempotent-run-once-stored-result")
  void concurrentDuplicatesWaitForTheFirstAndRunOnce() throws Exception {
    String key = key("concurrent");
    String fp = ResilienceClient.fingerprint("same request");
    AtomicInteger runs = new AtomicInteger();
    CountDownLatch start = new CountDownLatch(1);
    List<CompletableFuture<IdempotentResult>> calls = new ArrayList<>();
    for (int i = 0; i < 4; i++) {
      calls.add(
          async(
              () -> {
                start.await();
                return client.idempotent(
                    key,
                    fp,
                    () -> {
                      runs.incrementAndGet();
                      Thread.sleep(300); // duplicates arrive while it runs
                      return IdempotentResult.of(new byte[] {1, 2, 3});
                    });
              }));
    }
    start.countDown();
    for (CompletableFuture<IdempotentResult> c : calls) {
      assertArrayEquals(new byte[] {1, 2, 3}, c.get(30, TimeUnit.SECONDS).data());
    }
    assertEquals(1, runs.get());
  }

  @Test
  void idempotentAsyncRunsOnceAndGivesDuplicatesTheStoredResult() throws Exception {
    String key = key("async");
    String fp = ResilienceClient.fingerprint("async request");
    AtomicInteger runs = new AtomicInteger();
    CompletableFuture<Void> release = new CompletableFuture<>();
    CountDownLatch running = new CountDownLatch(1);
    CompletableFuture<IdempotentResult> first =
        client.idempotentAsync(
            key,
            fp,
            exec -> {
              runs.incrementAndGet();
              running.countDown();
              return exec.checkpointAsync("started", new byte[] {1})
                  .thenCompose(t -> release)
                  .thenApply(x -> IdempotentResult.ofString("async result", Map.of("n", "1")));
            });
    assertTrue(running.await(10, TimeUnit.SECONDS));
    // A duplicate while the first runs: it waits (IN_PROGRESS), then gets the stored result.
    CompletableFuture<IdempotentResult> second =
        client.idempotentAsync(
            key,
            fp,
            exec -> {
              runs.incrementAndGet();
              return CompletableFuture.completedFuture(IdempotentResult.ofString("second ran"));
            });
    Thread.sleep(300); // real time: the duplicate reaches the sidecar and waits there
    release.complete(null);
    assertEquals("async result", first.get(30, TimeUnit.SECONDS).dataAsString());
    IdempotentResult dup = second.get(30, TimeUnit.SECONDS);
    assertEquals("async result", dup.dataAsString());
    assertEquals(Map.of("n", "1"), dup.metadata());
    assertEquals(1, runs.get());

    // A failing stage releases the key: a retry runs.
    String other = key("async-fail");
    var e =
        assertThrows(
            java.util.concurrent.ExecutionException.class,
            () ->
                client
                    .idempotentAsync(
                        other,
                        fp,
                        exec -> CompletableFuture.failedFuture(new IOException("provider down")))
                    .get(30, TimeUnit.SECONDS));
    assertTrue(e.getCause() instanceof IOException, String.valueOf(e.getCause()));
    assertEquals(
        "ok",
        client
            .idempotentAsync(
                other, fp, exec -> CompletableFuture.completedFuture(IdempotentResult.ofString("ok")))
            .get(30, TimeUnit.SECONDS)
            .dataAsString());
  }

  @Test
  void aFailedOperationReleasesTheKeySoARetryRuns() throws Exception {
    String key = key("fail");
    String fp = ResilienceClient.fingerprint("req");
    AtomicInteger runs = new AtomicInteger();
    IOException boom = new IOException("provider down");
    IOException thrown =
        assertThrows(
            IOException.class,
            () ->
                client.idempotent(
                    key,
                    fp,
                    () -> {
                      runs.incrementAndGet();
                      throw boom;
                    }));
    assertEquals(boom, thrown);
    GetIdempotencyResponse state =
        client
            .idempotency()
            .getIdempotency(
                GetIdempotencyRequest.newBuilder().setKey(key).setFingerprint(fp).build());
    assertEquals(GetIdempotencyResponse.State.STATE_ABSENT, state.getState());

    IdempotentResult r =
        client.idempotent(
            key,
            fp,
            () -> {
              runs.incrementAndGet();
              return IdempotentResult.ofString("ok");
            });
    assertEquals("ok", r.dataAsString());
    assertEquals(2, runs.get());
  }

  @Test
  void reusingAKeyWithAnotherFingerprintIsAMismatch() {
    String key = key("mismatch");
    client.idempotent(key, ResilienceClient.fingerprint("a"), () -> IdempotentResult.ofString("a"));
    AtomicInteger runs = new AtomicInteger();
    IdempotencyKeyMismatchException e =
        assertThrows(
            IdempotencyKeyMismatchException.class,
            () ->
                client.idempotent(
                    key,
                    ResilienceClient.fingerprint("b"),
                    () -> {
                      runs.incrementAndGet();
                      return IdempotentResult.ofString("b");
                    }));
    assertEquals(Status.Code.FAILED_PRECONDITION, e.code());
    assertEquals("IDEMPOTENCY_KEY_MISMATCH", e.reason());
    assertEquals(0, runs.get());
  }

  @Test
  void aDuplicateGivesUpAfterMaxWait() throws Exception {
    String key = key("maxwait");
    String fp = ResilienceClient.fingerprint("slow");
    CountDownLatch running = new CountDownLatch(1);
    CountDownLatch finish = new CountDownLatch(1);
    CompletableFuture<IdempotentResult> owner =
        async(
            () ->
                client.idempotent(
                    key,
                    fp,
                    () -> {
                      running.countDown();
                      finish.await(30, TimeUnit.SECONDS);
                      return IdempotentResult.ofString("slow");
                    }));
    assertTrue(running.await(10, TimeUnit.SECONDS));
    IdempotentOptions opts = IdempotentOptions.defaults().maxWait(Duration.ofMillis(300));
    long t0 = System.nanoTime();
    IdempotencyInProgressException e =
        assertThrows(
            IdempotencyInProgressException.class,
            () ->
                client.idempotent(key, fp, opts, () -> IdempotentResult.ofString("duplicate ran")));
    assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(5));
    assertEquals(1, e.attempt());
    finish.countDown();
    assertEquals("slow", owner.get(10, TimeUnit.SECONDS).dataAsString());
    assertEquals(
        "slow",
        client.idempotent(key, fp, opts, () -> IdempotentResult.ofString("again")).dataAsString());
  }

  @Test
  void aTakeoverResumesFromTheCheckpointAndTheStaleOwnerLearnsItsLeaseIsLost() throws Exception {
    String key = key("takeover");
    String fp = ResilienceClient.fingerprint("multi-phase");
    IdempotentOptions opts = IdempotentOptions.defaults().leaseTtl(Duration.ofSeconds(1));
    CountDownLatch checkpointed = new CountDownLatch(1);
    CountDownLatch takenOver = new CountDownLatch(1);
    // The first executor records a checkpoint, then stalls past its lease (as if paused or dying).
    CompletableFuture<IdempotentResult> stale =
        async(
            () ->
                client.idempotent(
                    key,
                    fp,
                    opts,
                    exec -> {
                      assertEquals(1, exec.attempt());
                      exec.checkpoint("charged", "ch_1".getBytes(StandardCharsets.UTF_8));
                      checkpointed.countDown();
                      takenOver.await(30, TimeUnit.SECONDS);
                      return IdempotentResult.ofString("stale");
                    }));
    assertTrue(checkpointed.await(10, TimeUnit.SECONDS));

    // The retry waits for the lease to expire, takes over and resumes after "charged".
    IdempotentResult r =
        client.idempotent(
            key,
            fp,
            opts,
            exec -> {
              assertEquals(2, exec.attempt());
              assertEquals("charged", exec.recoveryPoint());
              assertEquals("ch_1", new String(exec.recoveryData(), StandardCharsets.UTF_8));
              return IdempotentResult.ofString("resumed");
            });
    assertEquals("resumed", r.dataAsString());
    takenOver.countDown();

    var e =
        assertThrows(
            java.util.concurrent.ExecutionException.class, () -> stale.get(10, TimeUnit.SECONDS));
    LeaseLostException lost = (LeaseLostException) e.getCause();
    assertEquals("LEASE_LOST", lost.reason());
    assertTrue(lost.getMessage().contains("may have run twice"), lost.getMessage());
  }
}
