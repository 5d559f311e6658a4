package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.AcquireLockRequest;
import io.github.seeda88e5317.resilience.v1.AcquireLockResponse;
import io.github.seeda88e5317.resilience.v1.GetLockRequest;
import io.github.seeda88e5317.resilience.v1.GetLockResponse;
import io.grpc.Status;
import java.io.IOException;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

@ExtendWith(SidecarExtension.class)
@Timeout(60)
class LockSessionTest {
  ResilienceClient client;

  @BeforeEach
  void connect(SidecarExtension.Env env) {
    client = env.client();
  }

  @AfterEach
  void close() {
    client.close();
  }

  static String key(String name) {
    return "java/session/" + name + "/" + System.nanoTime();
  }

  GetLockResponse get(String key) {
    return client.locks().getLock(GetLockRequest.newBuilder().setKey(key).build());
  }

  @Test
  void maxHoldCompletesLostAndCloseThrowsLeaseLost() throws Exception {
    String key = key("maxhold");
    LockSession session =
        client.holdLock(
            key,
            LockOptions.defaults()
                .ttl(Duration.ofSeconds(1))
                .maxHold(Duration.ofMillis(300))
                .owner("maxhold"));
    assertFalse(session.isLost());
    assertTrue(session.lease().fencingToken() > 0);

    LeaseLostException lost = session.lost().get(10, TimeUnit.SECONDS);
    assertEquals("MAX_HOLD", lost.lossReason());
    assertTrue(session.isLost());
    assertTrue(session.cancellation().isCancelled());

    LeaseLostException e = assertThrows(LeaseLostException.class, session::close);
    assertEquals(Status.Code.FAILED_PRECONDITION, e.code());
    assertEquals("LEASE_LOST", e.reason());
    assertEquals("MAX_HOLD", e.lossReason());
    session.close(); // a second close does nothing

    // The sidecar released it: the lock is free again.
    AcquireLockResponse r =
        client.locks().acquireLock(AcquireLockRequest.newBuilder().setKey(key).build());
    assertTrue(r.getAcquired());
    assertTrue(r.getLease().getFencingToken() > session.lease().fencingToken());
  }

  @Test
  void closeReleasesTheLock() {
    String key = key("release");
    Lease lease;
    try (LockSession session = client.holdLock(key, LockOptions.defaults().owner("releaser"))) {
      lease = session.lease();
      GetLockResponse held = get(key);
      assertTrue(held.getHeld());
      assertEquals("releaser", held.getHolder().getOwner());
      assertEquals(lease.fencingToken(), held.getHolder().getFencingToken());
    }
    GetLockResponse after = get(key);
    assertFalse(after.getHeld());
    assertEquals(lease.fencingToken(), after.getLastFencingToken());
  }

  @Test
  void sessionRenewsTheLeaseBeyondItsTtl() throws Exception {
    String key = key("renew");
    try (LockSession session =
        client.holdLock(key, LockOptions.defaults().ttl(Duration.ofMillis(500)))) {
      var first = session.expireTime();
      Thread.sleep(1600); // more than three TTLs
      assertFalse(session.isLost(), "lost: " + session.lost().getNow(null));
      assertTrue(session.expireTime().isAfter(first), "expiry did not move");
      assertTrue(get(key).getHeld());
    }
    assertFalse(get(key).getHeld());
  }

  @Test
  void heldLockIsNotAcquiredAndAWaiterIsWokenByTheRelease() throws Exception {
    String key = key("contend");
    LockSession a = client.holdLock(key, LockOptions.defaults().owner("a"));
    NotAcquiredException na =
        assertThrows(
            NotAcquiredException.class,
            () ->
                client.holdLock(
                    key, LockOptions.defaults().owner("b").waitTimeout(Duration.ofMillis(200))));
    assertEquals("a", na.holderOwner());
    assertEquals(a.lease().fencingToken(), na.holderFencingToken());

    CompletableFuture<LockSession> b =
        CompletableFuture.supplyAsync(
            () ->
                client.holdLock(
                    key, LockOptions.defaults().owner("b").waitTimeout(Duration.ofSeconds(20))));
    Thread.sleep(200);
    assertFalse(b.isDone());
    a.close();
    try (LockSession bs = b.get(10, TimeUnit.SECONDS)) {
      assertTrue(bs.lease().fencingToken() > a.lease().fencingToken());
      assertEquals("b", bs.lease().owner());
    }
  }

  @Test
  void withLockReturnsTheResultAndReleases() {
    String key = key("withlock");
    long token =
        client.withLock(
            key,
            (lease, cancelled) -> {
              assertTrue(get(key).getHeld());
              assertFalse(cancelled.isCancelled());
              return lease.fencingToken();
            });
    GetLockResponse after = get(key);
    assertFalse(after.getHeld());
    assertEquals(token, after.getLastFencingToken());
  }

  @Test
  void withLockRethrowsTheCallbacksCheckedExceptionAndReleases() {
    String key = key("withlock-error");
    IOException boom = new IOException("boom");
    IOException thrown =
        assertThrows(
            IOException.class,
            () ->
                client.withLock(
                    key,
                    (lease, cancelled) -> {
                      throw boom;
                    }));
    assertEquals(boom, thrown);
    assertEquals(0, thrown.getSuppressed().length, "no lease loss expected");
    assertFalse(get(key).getHeld());
  }

  @Test
  void withLockCancelsTheCallbackOnLeaseLossAndThrowsLeaseLost() {
    String key = key("withlock-lost");
    AtomicBoolean sawCancel = new AtomicBoolean();
    LockOptions opts =
        LockOptions.defaults().ttl(Duration.ofSeconds(1)).maxHold(Duration.ofMillis(300));
    LeaseLostException e =
        assertThrows(
            LeaseLostException.class,
            () ->
                client.withLock(
                    key,
                    opts,
                    (lease, cancelled) -> {
                      cancelled
                          .future()
                          .get(10, TimeUnit.SECONDS); // the sidecar ends the session at max_hold
                      sawCancel.set(cancelled.isCancelled());
                      return null; // returning normally does not hide the loss
                    }));
    assertTrue(sawCancel.get());
    assertEquals("MAX_HOLD", e.lossReason());
  }

  @Test
  void onCancelCanInterruptTheWorkingThread() {
    String key = key("withlock-interrupt");
    LockOptions opts =
        LockOptions.defaults().ttl(Duration.ofSeconds(1)).maxHold(Duration.ofMillis(300));
    long start = System.nanoTime();
    InterruptedException e =
        assertThrows(
            InterruptedException.class,
            () ->
                client.withLock(
                    key,
                    opts,
                    (lease, cancelled) -> {
                      Thread worker = Thread.currentThread();
                      cancelled.onCancel(worker::interrupt);
                      Thread.sleep(30_000);
                      return null;
                    }));
    Thread.interrupted(); // clear what the cancellation set
    assertTrue(System.nanoTime() - start < TimeUnit.SECONDS.toNanos(10));
    assertEquals(1, e.getSuppressed().length);
    assertInstanceOf(LeaseLostException.class, e.getSuppressed()[0]);
    assertFalse(get(key).getHeld());
  }

  @Test
  void lostNeverCompletesForACleanSession() throws Exception {
    String key = key("clean");
    LockSession s = client.holdLock(key);
    CompletableFuture<LeaseLostException> lost = s.lost();
    s.close();
    Thread.sleep(100);
    assertFalse(lost.isDone());
    assertNull(s.lost().getNow(null));
  }
}
