package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Lease safety by the client's own clock, with sidecars that stop answering: two sidecars A and B
 * on the shared Redis, A frozen (SIGSTOP) or killed (SIGKILL) while a lock is held through it.
 */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class LeaseSafetyTest {
  static final Duration TTL = Duration.ofSeconds(2);
  static final Duration CALL_TIMEOUT = Duration.ofSeconds(1);
  /** Scheduling slack allowed past a helper's deadline on a loaded machine. */
  static final long SLACK_NANOS = TimeUnit.MILLISECONDS.toNanos(1000);

  static ResilienceClient clientOf(String address) {
    return ResilienceClient.builder()
        .environment(Map.of())
        .address(address)
        .callTimeout(CALL_TIMEOUT)
        .build();
  }

  /** Runs {@code call} on a thread of its own; the future records when it ended. */
  static <T> CompletableFuture<T> background(java.util.concurrent.Callable<T> call, AtomicLong endedAt) {
    CompletableFuture<T> f = new CompletableFuture<>();
    Thread t =
        new Thread(
            () -> {
              try {
                T v = call.call();
                endedAt.set(System.nanoTime());
                f.complete(v);
              } catch (Throwable e) {
                endedAt.set(System.nanoTime());
                f.completeExceptionally(e);
              }
            });
    t.setDaemon(true);
    t.start();
    return f;
  }

  @Test
  @Tag("scenario:lock-frozen-sidecar")
  void aFrozenSidecarsLeaseIsLostByTheClientsClockBeforeAnotherClientGetsTheLock(
      SidecarExtension.Env env) throws Exception {
    TestProcesses.Sidecar a =
        TestProcesses.Sidecar.start(TestProcesses.workDir("frozen-a"), env.redis().url(), null, null);
    TestProcesses.Sidecar b =
        TestProcesses.Sidecar.start(TestProcesses.workDir("frozen-b"), env.redis().url(), null, null);
    String key = "java/frozen/" + System.nanoTime();
    try (ResilienceClient viaA = clientOf(a.address);
        ResilienceClient viaB = clientOf(b.address)) {
      LockSession session = viaA.holdLock(key, LockOptions.defaults().ttl(TTL).owner("a"));
      AtomicLong lostAt = new AtomicLong();
      CompletableFuture<LeaseLostException> lost =
          session.lost().whenComplete((e, x) -> lostAt.set(System.nanoTime()));

      // withLock through A on another key: its callback waits for the loss, then returns.
      CountDownLatch inCallback = new CountDownLatch(1);
      AtomicLong callbackLostAt = new AtomicLong();
      AtomicLong withLockEndedAt = new AtomicLong();
      CompletableFuture<Object> withLock =
          background(
              () ->
                  viaA.withLock(
                      key + "/with",
                      LockOptions.defaults().ttl(TTL),
                      (lease, cancelled) -> {
                        inCallback.countDown();
                        cancelled.future().get(20, TimeUnit.SECONDS);
                        callbackLostAt.set(System.nanoTime());
                        return null;
                      }),
              withLockEndedAt);
      assertTrue(inCallback.await(10, TimeUnit.SECONDS));

      TestProcesses.sleep(800); // real time: renewals arrive (every TTL/3) before the freeze
      a.freeze(); // SIGSTOP: the socket stays open, nothing answers
      long frozenAt = System.nanoTime();

      // B's client waits for the lock; it gets it once the lease expires in Redis.
      AtomicLong bAcquiredAt = new AtomicLong();
      CompletableFuture<LockSession> contender =
          background(
              () ->
                  viaB.holdLock(
                      key, LockOptions.defaults().owner("b").waitTimeout(Duration.ofSeconds(15))),
              bAcquiredAt);

      LeaseLostException e = lost.get(10, TimeUnit.SECONDS);
      assertEquals(LockSession.RENEWAL_OVERDUE, e.lossReason(), e.getMessage());
      long lastConfirmation = session.confirmedAtNanos();
      long sinceLast = lostAt.get() - lastConfirmation;
      assertTrue(
          sinceLast <= TimeUnit.MILLISECONDS.toNanos(2200),
          "loss signalled " + sinceLast / 1_000_000 + " ms after the last renewal, want <= 2200");
      assertTrue(
          sinceLast >= TTL.minus(LockOptions.safetyMargin(TTL)).toNanos(),
          "loss signalled before the local deadline: " + sinceLast / 1_000_000 + " ms");
      assertTrue(lastConfirmation - frozenAt < 0, "a renewal arrived after the freeze");
      System.out.printf(
          "lock-frozen-sidecar: loss signalled %d ms after the last renewal received%n",
          sinceLast / 1_000_000);

      try (LockSession bSession = contender.get(15, TimeUnit.SECONDS)) {
        assertEquals("b", bSession.lease().owner());
        assertTrue(bSession.lease().fencingToken() > session.lease().fencingToken());
        assertTrue(
            lostAt.get() - bAcquiredAt.get() < 0,
            "B acquired the lock before A's client signalled the loss");
        System.out.printf(
            "lock-frozen-sidecar: B acquired %d ms after A's client signalled the loss%n",
            (bAcquiredAt.get() - lostAt.get()) / 1_000_000);
      }

      // Every helper returns within its bound. withLock: at once after its callback returned
      // (the lease is lost, nothing to wait for), with the loss.
      ExecutionException we = assertThrows(ExecutionException.class, () -> withLock.get(10, TimeUnit.SECONDS));
      LeaseLostException wl = assertInstanceOf(LeaseLostException.class, we.getCause());
      assertEquals(LockSession.RENEWAL_OVERDUE, wl.lossReason());
      assertTrue(
          withLockEndedAt.get() - callbackLostAt.get() < CALL_TIMEOUT.toNanos() + SLACK_NANOS,
          "withLock returned " + (withLockEndedAt.get() - callbackLostAt.get()) / 1_000_000 + " ms after its callback");

      long t0 = System.nanoTime();
      LeaseLostException closed = assertThrows(LeaseLostException.class, session::close);
      assertEquals(LockSession.RENEWAL_OVERDUE, closed.lossReason());
      assertTrue(System.nanoTime() - t0 < CALL_TIMEOUT.toNanos() + SLACK_NANOS);

      // Acquiring through the frozen sidecar: bounded by wait_timeout + the call timeout.
      t0 = System.nanoTime();
      assertThrows(DeadlineExceededException.class, () -> viaA.holdLock(key + "/2"));
      assertTrue(System.nanoTime() - t0 < CALL_TIMEOUT.toNanos() + SLACK_NANOS);
      t0 = System.nanoTime();
      assertThrows(DeadlineExceededException.class, () -> viaA.lock(key + "/3").acquire());
      assertTrue(System.nanoTime() - t0 < CALL_TIMEOUT.toNanos() + SLACK_NANOS);
      t0 = System.nanoTime();
      assertThrows(
          DeadlineExceededException.class,
          () -> viaA.withLock(key + "/4", (lease, cancelled) -> { throw new AssertionError("ran"); }));
      assertTrue(System.nanoTime() - t0 < CALL_TIMEOUT.toNanos() + SLACK_NANOS);

      // Every other helper through the frozen sidecar gives up at its deadline: the call timeout
      // (subscribe: its confirmation, bounded by the same; executeCall: the request's timeout,
      // 1 s here, plus the call timeout), and none runs the caller's code.
      Map<String, org.junit.jupiter.api.function.Executable> helpers = new java.util.LinkedHashMap<>();
      helpers.put("idempotent", () -> viaA.idempotent(key + "/op", "fp",
          IdempotentOptions.defaults().unavailableRetries(0).inProgressWait(Duration.ZERO),
          () -> { throw new AssertionError("ran"); }));
      helpers.put("breaker guard", () -> viaA.breaker("frozen").decorateSupplier(() -> {
        throw new AssertionError("ran");
      }).get());
      helpers.put("executeCall", () -> viaA.executeCall("none", UpstreamRequest.get("/").timeout(Duration.ofSeconds(1))));
      helpers.put("startSaga", () -> viaA.startSaga(key + "-saga", "frozen"));
      helpers.put("lamportClock.stamp", () -> viaA.lamportClock("frozen").stamp());
      helpers.put("publish", () -> viaA.publish("java-test.frozen", new byte[] {1}));
      helpers.put("subscribe", () -> viaA.subscribe("java-test.frozen", "g", "c").close());
      for (Map.Entry<String, org.junit.jupiter.api.function.Executable> h : helpers.entrySet()) {
        t0 = System.nanoTime();
        assertThrows(DeadlineExceededException.class, h.getValue(), h.getKey() + " through the frozen sidecar");
        long took = System.nanoTime() - t0;
        long bound = CALL_TIMEOUT.toNanos() * (h.getKey().equals("executeCall") ? 2 : 1);
        assertTrue(took < bound + SLACK_NANOS,
            h.getKey() + " returned " + took / 1_000_000 + " ms after it started (deadline " + bound / 1_000_000 + " ms)");
      }
    } finally {
      a.close(); // SIGCONT, then stopped
      b.close();
    }
  }

  @Test
  @Tag("scenario:lock-killed-sidecar")
  void aKilledSidecarEndsTheLeaseAndTheHelperReturns(SidecarExtension.Env env) throws Exception {
    TestProcesses.Sidecar a =
        TestProcesses.Sidecar.start(TestProcesses.workDir("killed-a"), env.redis().url(), null, null);
    String key = "java/killed/" + System.nanoTime();
    try (ResilienceClient client = clientOf(a.address)) {
      CountDownLatch inCallback = new CountDownLatch(1);
      AtomicLong callbackLostAt = new AtomicLong();
      AtomicLong endedAt = new AtomicLong();
      CompletableFuture<Object> withLock =
          background(
              () ->
                  client.withLock(
                      key,
                      LockOptions.defaults().ttl(TTL),
                      (lease, cancelled) -> {
                        inCallback.countDown();
                        cancelled.future().get(20, TimeUnit.SECONDS);
                        callbackLostAt.set(System.nanoTime());
                        return null;
                      }),
              endedAt);
      LockSession session = client.holdLock(key + "/session", LockOptions.defaults().ttl(TTL));
      assertTrue(inCallback.await(10, TimeUnit.SECONDS));
      a.process.destroyForcibly(); // SIGKILL mid-hold
      long killedAt = System.nanoTime();
      a.process.onExit().get(10, TimeUnit.SECONDS);

      LeaseLostException sl = session.lost().get(10, TimeUnit.SECONDS);
      assertTrue(
          Set.of(LockSession.STREAM_ENDED, LockSession.RENEWAL_OVERDUE).contains(sl.lossReason()),
          sl.getMessage());
      ExecutionException e = assertThrows(ExecutionException.class, () -> withLock.get(10, TimeUnit.SECONDS));
      LeaseLostException wl = assertInstanceOf(LeaseLostException.class, e.getCause());
      assertTrue(
          Set.of(LockSession.STREAM_ENDED, LockSession.RENEWAL_OVERDUE).contains(wl.lossReason()),
          wl.getMessage());
      assertTrue(
          endedAt.get() - callbackLostAt.get() < CALL_TIMEOUT.toNanos() + SLACK_NANOS,
          "withLock returned " + (endedAt.get() - callbackLostAt.get()) / 1_000_000 + " ms after its callback");
      assertTrue(callbackLostAt.get() - killedAt > 0);
      assertThrows(LeaseLostException.class, session::close);
      // And the next call fails at once: the sidecar is unreachable.
      assertThrows(SidecarUnreachableException.class, () -> client.holdLock(key + "/after"));
    } finally {
      a.close();
    }
  }
}
