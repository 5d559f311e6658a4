package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.GetSemaphoreRequest;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Supplier;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Rate limits ({@link RateLimiter}, {@link ResilienceClient#take}) and bulkheads ({@link
 * PermitSession}, {@link ResilienceClient#withPermit}) against the real sidecar on the shared
 * Redis, with a config file declaring the limiters.
 */
@ExtendWith(SidecarExtension.class)
@Timeout(90)
class RateLimitBulkheadTest {
  /**
   * "hourly" refills one token an hour (nothing refills during a test), "slow" one every 3 s (long
   * enough for a refusal, short enough to wait for).
   */
  static final String CONFIG =
      """
      ratelimits:
        hourly: {algorithm: gcra, rate: 1, period: 1h, burst: 3}
        slow: {algorithm: gcra, rate: 1, period: 3s, burst: 1}
        window: {algorithm: sliding_window, limit: 2, window: 1h}
      """;

  static TestProcesses.Sidecar limited;
  static ResilienceClient client;

  @BeforeAll
  static void start(SidecarExtension.Env env) throws IOException {
    Path dir = TestProcesses.workDir("ratelimits");
    Path cfg = dir.resolve("ratelimits.yaml");
    Files.writeString(cfg, CONFIG);
    limited =
        TestProcesses.Sidecar.start(
            dir, env.redis().url(), null, null, List.of("--config", cfg.toString()));
    client = clientOf(limited.address, Duration.ofSeconds(10));
  }

  @AfterAll
  static void stop() {
    if (client != null) {
      client.close();
    }
    if (limited != null) {
      limited.close();
    }
  }

  static ResilienceClient clientOf(String address, Duration callTimeout) {
    return ResilienceClient.builder()
        .environment(Map.of())
        .address(address)
        .callTimeout(callTimeout)
        .build();
  }

  static String unique(String what) {
    return "java/" + what + "/" + System.nanoTime();
  }

  @Test
  @Tag("scenario:ratelimit-take-decision")
  void takeAnswersATypedDecision() {
    takeDecision("hourly", 3);
    takeDecision("window", 2);
  }

  /** The take-decision scenario on one limiter of the given capacity. */
  private static void takeDecision(String limiter, long capacity) {
    String key = unique(limiter);
    RateLimiter rl = client.rateLimiter(limiter, key);
    for (long i = 0; i < capacity; i++) {
      RateDecision d = rl.take();
      assertTrue(d.allowed(), d.toString());
      assertEquals(capacity - 1 - i, d.remaining(), d.toString());
      assertEquals(capacity, d.limit());
      assertEquals(Duration.ZERO, d.retryAfter());
      assertTrue(d.resetAfter().compareTo(Duration.ZERO) > 0, d.toString());
    }
    RateDecision d = rl.take();
    assertFalse(d.allowed(), d.toString());
    assertEquals(0, d.remaining());
    assertEquals(capacity, d.limit());
    assertTrue(
        d.retryAfter().compareTo(Duration.ZERO) > 0
            && d.retryAfter().compareTo(Duration.ofHours(1)) <= 0,
        d.toString());

    String other = unique(limiter + "-cost");
    RateDecision two = client.take(limiter, other, 2, Duration.ZERO);
    assertTrue(two.allowed() && two.remaining() == capacity - 2, two.toString());
    assertFalse(client.take(limiter, other, capacity, Duration.ZERO).allowed());
  }

  @Test
  void takeErrorsAreTypedAndTheFunctionDoesNotRun() {
    record Case(String limiter, long cost, Class<? extends Exception> want) {}
    for (Case c :
        List.of(
            new Case("nope", 1, LimiterUnknownException.class),
            new Case("hourly", -1, InvalidArgumentException.class),
            new Case("hourly", 4, InvalidArgumentException.class))) {
      RateLimiter rl = client.rateLimiter(c.limiter(), "k").withCost(c.cost());
      assertThrows(c.want(), rl::take, c.toString());
      AtomicInteger runs = new AtomicInteger();
      assertThrows(c.want(), () -> rl.executeRunnable(runs::incrementAndGet), c.toString());
      assertEquals(0, runs.get());
    }
  }

  @Test
  @Tag("scenario:ratelimit-wait-then-typed-error")
  void rateLimitedWaitsThenThrowsTyped() throws Exception {
    String key = unique("wait");
    AtomicInteger runs = new AtomicInteger();
    RateLimiter quick = client.rateLimiter("slow", key).withWaitTimeout(Duration.ofMillis(100));
    Supplier<Integer> call = quick.decorateSupplier(runs::incrementAndGet);

    assertEquals(1, call.get());
    RateLimitedException e = assertThrows(RateLimitedException.class, call::get);
    assertEquals(1, runs.get(), "a refused call must not run");
    assertEquals("slow", e.limiter());
    assertEquals(key, e.key());
    assertEquals(1, e.cost());
    assertFalse(e.decision().allowed());
    assertTrue(
        e.retryAfter().compareTo(Duration.ZERO) > 0
            && e.retryAfter().compareTo(Duration.ofSeconds(3)) <= 0,
        e.getMessage());
    // The token comes back within 3 s: a wait of 10 s gets it.
    assertEquals(
        2,
        quick
            .withWaitTimeout(Duration.ofSeconds(10))
            .decorateCallable(runs::incrementAndGet)
            .call());
    assertFalse(quick.acquirePermission(), "the waited-for token was taken");
    assertEquals(3, quick.withKey(key + "/other").executeSupplier(runs::incrementAndGet));
  }

  @Test
  @Tag("scenario:bulkhead-limit-holds")
  void bulkheadLimitHolds(SidecarExtension.Env env) throws Exception {
    TestProcesses.Sidecar b =
        TestProcesses.Sidecar.start(TestProcesses.workDir("bulkhead-b"), env.redis().url(), null, null);
    try (ResilienceClient viaB = clientOf(b.address, Duration.ofSeconds(10))) {
      List<ResilienceClient> clients = List.of(client, viaB);
      String name = unique("bulkhead");
      int limit = 2, workers = 6, calls = 4;
      AtomicInteger inside = new AtomicInteger();
      AtomicInteger most = new AtomicInteger();
      Set<Long> tokens = ConcurrentHashMap.newKeySet();
      List<CompletableFuture<Void>> done = new ArrayList<>();
      for (int w = 0; w < workers; w++) {
        ResilienceClient c = clients.get(w % 2);
        LockOptions opts =
            LockOptions.defaults().waitTimeout(Duration.ofMinutes(1)).owner("worker-" + w);
        done.add(
            CompletableFuture.runAsync(
                () -> {
                  for (int i = 0; i < calls; i++) {
                    c.withPermit(
                        name,
                        limit,
                        opts,
                        (permit, cancelled) -> {
                          int n = inside.incrementAndGet();
                          most.accumulateAndGet(n, Math::max);
                          assertTrue(n <= limit, n + " inside a bulkhead of " + limit);
                          assertTrue(
                              tokens.add(permit.fencingToken()),
                              "token " + permit.fencingToken() + " granted twice");
                          TestProcesses.sleep(20); // real time: the others queue up meanwhile
                          inside.decrementAndGet();
                          assertFalse(cancelled.isCancelled());
                          return null;
                        });
                  }
                }));
      }
      CompletableFuture.allOf(done.toArray(CompletableFuture[]::new)).get(60, TimeUnit.SECONDS);
      assertEquals(limit, most.get());
      assertEquals(workers * calls, tokens.size());

      // Full: two holders inside, a third that does not wait is refused.
      try (PermitSession p1 = client.holdPermit(name, limit, LockOptions.defaults());
          PermitSession p2 = viaB.holdPermit(name, limit, LockOptions.defaults())) {
        assertTrue(p1.lease().fencingToken() != p2.lease().fencingToken());
        AtomicInteger ran = new AtomicInteger();
        BulkheadFullException full =
            assertThrows(
                BulkheadFullException.class,
                () -> client.withPermit(name, limit, (p, c) -> ran.incrementAndGet()));
        assertEquals(limit, full.held());
        assertEquals(limit, full.limit());
        assertEquals(name, full.name());
        assertEquals(0, ran.get());
      }
      assertEquals(
          0, client.semaphores().getSemaphore(GetSemaphoreRequest.newBuilder().setName(name).build()).getHeld());
    } finally {
      b.close();
    }
  }

  @Test
  void permitMaxHoldIsLeaseLostAndErrorsPassThrough() {
    String name = unique("permit-errors");
    LeaseLostException e =
        assertThrows(
            LeaseLostException.class,
            () ->
                client.withPermit(
                    name,
                    1,
                    LockOptions.defaults().ttl(Duration.ofSeconds(1)).maxHold(Duration.ofMillis(300)),
                    (permit, cancelled) -> {
                      cancelled.future().get(10, TimeUnit.SECONDS);
                      return null;
                    }));
    assertEquals("MAX_HOLD", e.lossReason());
    IllegalStateException boom =
        assertThrows(
            IllegalStateException.class,
            () ->
                client.withPermit(
                    name,
                    1,
                    (p, c) -> {
                      throw new IllegalStateException("boom");
                    }));
    assertEquals("boom", boom.getMessage());
    assertEquals(
        0, client.semaphores().getSemaphore(GetSemaphoreRequest.newBuilder().setName(name).build()).getHeld());
    assertThrows(
        InvalidArgumentException.class,
        () -> client.withPermit(name, 0, (p, c) -> { throw new AssertionError("ran"); }));
  }

  @Test
  @Tag("scenario:bulkhead-permit-lost-by-client-clock")
  void aFrozenSidecarsPermitIsLostByTheClientsClock(SidecarExtension.Env env) throws Exception {
    Duration ttl = Duration.ofSeconds(2);
    Duration callTimeout = Duration.ofSeconds(1);
    TestProcesses.Sidecar a =
        TestProcesses.Sidecar.start(TestProcesses.workDir("permit-frozen-a"), env.redis().url(), null, null);
    TestProcesses.Sidecar b =
        TestProcesses.Sidecar.start(TestProcesses.workDir("permit-frozen-b"), env.redis().url(), null, null);
    String name = unique("frozen");
    try (ResilienceClient viaA = clientOf(a.address, callTimeout);
        ResilienceClient viaB = clientOf(b.address, Duration.ofSeconds(10))) {
      PermitSession session = viaA.holdPermit(name, 1, LockOptions.defaults().ttl(ttl).owner("a"));
      AtomicLong lostAt = new AtomicLong();
      CompletableFuture<LeaseLostException> lost =
          session.lost().whenComplete((e, x) -> lostAt.set(System.nanoTime()));
      long granted = session.confirmedAtNanos();
      for (int i = 0; session.confirmedAtNanos() == granted; i++) {
        assertTrue(i < 400, "no renewal within 4 s");
        TestProcesses.sleep(10); // real time: the sidecar renews every TTL/3
      }
      a.freeze(); // SIGSTOP: the socket stays open, nothing answers
      long frozenAt = System.nanoTime();

      AtomicLong bAcquiredAt = new AtomicLong();
      CompletableFuture<Long> contender =
          CompletableFuture.supplyAsync(
              () ->
                  viaB.withPermit(
                      name,
                      1,
                      LockOptions.defaults().owner("b").waitTimeout(Duration.ofSeconds(15)),
                      (p, c) -> {
                        bAcquiredAt.set(System.nanoTime());
                        return p.fencingToken();
                      }));

      LeaseLostException e = lost.get(10, TimeUnit.SECONDS);
      assertEquals(LockSession.RENEWAL_OVERDUE, e.lossReason(), e.getMessage());
      long lastConfirmation = session.confirmedAtNanos();
      long sinceLast = lostAt.get() - lastConfirmation;
      assertTrue(
          sinceLast <= TimeUnit.MILLISECONDS.toNanos(2200),
          "loss signalled " + sinceLast / 1_000_000 + " ms after the last renewal, want <= 2200");
      assertTrue(lastConfirmation - frozenAt < 0, "a renewal arrived after the freeze");
      long token = contender.get(15, TimeUnit.SECONDS);
      assertTrue(token > session.lease().fencingToken());
      assertTrue(
          lostAt.get() - bAcquiredAt.get() < 0,
          "B acquired the permit before A's client signalled the loss");
      System.out.printf(
          "bulkhead-permit-lost-by-client-clock: lost %d ms after the last renewal; B acquired %d ms after the loss%n",
          sinceLast / 1_000_000, (bAcquiredAt.get() - lostAt.get()) / 1_000_000);

      long t0 = System.nanoTime();
      LeaseLostException closed = assertThrows(LeaseLostException.class, session::close);
      assertEquals(LockSession.RENEWAL_OVERDUE, closed.lossReason());
      assertTrue(System.nanoTime() - t0 < callTimeout.toNanos() + TimeUnit.SECONDS.toNanos(1));
      t0 = System.nanoTime();
      ExecutionException acquire =
          assertThrows(
              ExecutionException.class,
              () -> viaA.holdPermitAsync(name + "/2", 1, LockOptions.defaults()).get(10, TimeUnit.SECONDS));
      assertInstanceOf(DeadlineExceededException.class, acquire.getCause());
      assertTrue(System.nanoTime() - t0 < callTimeout.toNanos() + TimeUnit.SECONDS.toNanos(1));
    } finally {
      a.thaw();
      a.close();
      b.close();
    }
  }
}
