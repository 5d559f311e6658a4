package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.GetLockRequest;
import io.github.seeda88e5317.resilience.v1.GetLockResponse;
import java.time.Duration;
import java.time.Instant;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** The explicit lock handle and the async lock helpers against the real sidecar. */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class LockHandleTest {
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
    return "java/handle/" + name + "/" + System.nanoTime();
  }

  GetLockResponse get(String key) {
    return client.locks().getLock(GetLockRequest.newBuilder().setKey(key).build());
  }

  @Test
  @Tag("scenario:lock-explicit-handle")
  void acquireFencingTokenLockedExtendRelease() {
    String key = key("explicit");
    LockHandle lock = client.lock(key, LockOptions.defaults().ttl(Duration.ofSeconds(5)).owner("me"));
    assertFalse(lock.locked());
    assertThrows(IllegalStateException.class, lock::fencingToken);

    Lease lease = lock.acquire();
    assertTrue(lock.locked());
    assertEquals(lease.fencingToken(), lock.fencingToken());
    assertTrue(lock.fencingToken() > 0);
    GetLockResponse held = get(key);
    assertTrue(held.getHeld());
    assertEquals("me", held.getHolder().getOwner());
    assertEquals(lock.fencingToken(), held.getHolder().getFencingToken());
    assertThrows(IllegalStateException.class, lock::acquire, "acquired twice");

    // Someone else cannot take it meanwhile.
    LockHandle other = client.lock(key, LockOptions.defaults().owner("other"));
    NotAcquiredException na = assertThrows(NotAcquiredException.class, other::acquire);
    assertEquals("me", na.holderOwner());
    assertFalse(other.tryAcquire());

    Instant before = lease.expireTime();
    Instant extended = lock.extend(Duration.ofSeconds(20));
    assertTrue(extended.isAfter(before), extended + " not after " + before);
    assertTrue(lock.locked());
    assertTrue(lock.timeLeft().compareTo(Duration.ofSeconds(10)) > 0, "" + lock.timeLeft());
    assertEquals(extended, Instant.ofEpochSecond(
        get(key).getHolder().getExpireTime().getSeconds(), get(key).getHolder().getExpireTime().getNanos()));

    lock.release();
    assertFalse(lock.locked());
    assertFalse(get(key).getHeld());
    assertEquals(lease.fencingToken(), lock.fencingToken(), "the token stays readable");
    assertThrows(IllegalStateException.class, lock::release, "released twice");

    // The handle can be acquired again: a new, higher token.
    assertTrue(other.tryAcquire());
    assertTrue(other.fencingToken() > lease.fencingToken());
    other.close();
    assertFalse(get(key).getHeld());
  }

  @Test
  void aLeasePastItsLocalDeadlineIsLost() {
    String key = key("expired");
    LockHandle lock = client.lock(key, LockOptions.defaults().ttl(Duration.ofMillis(500)));
    lock.acquire();
    assertTrue(lock.locked());
    TestProcesses.sleep(450); // real time: past the local deadline (500 ms - 100 ms margin)
    assertFalse(lock.locked());
    LeaseLostException e = assertThrows(LeaseLostException.class, lock::extend);
    assertEquals(LockSession.RENEWAL_OVERDUE, e.lossReason());
    assertThrows(IllegalStateException.class, lock::release, "the lost lease was forgotten");
  }

  @Test
  void theLocalDeadlinePassesBeforeAnotherHolderCanTakeTheLock() {
    String key = key("taken");
    Duration ttl = Duration.ofMillis(300);
    LockHandle lock = client.lock(key, LockOptions.defaults().ttl(ttl));
    lock.acquire();
    long localDeadline =
        lock.confirmedAtNanos() + ttl.minus(LockOptions.safetyMargin(ttl)).toNanos();
    // real time: the second holder waits until the first lease expires in the store
    LockHandle second = client.lock(key, LockOptions.defaults().waitTimeout(Duration.ofSeconds(5)));
    second.acquire();
    long acquiredAt = second.confirmedAtNanos();
    assertTrue(
        localDeadline - acquiredAt < 0, "the first holder still counted the lease as held");
    assertFalse(lock.locked());
    assertTrue(second.fencingToken() > lock.fencingToken());
    second.release();
  }

  @Test
  void asyncHandleAndWithLockAsync() throws Exception {
    String key = key("async");
    LockHandle lock = client.lock(key);
    Lease lease = lock.acquireAsync().get(10, TimeUnit.SECONDS);
    assertTrue(lock.locked());
    assertTrue(lock.extendAsync(Duration.ofSeconds(15)).get(10, TimeUnit.SECONDS).isAfter(lease.expireTime()));
    lock.releaseAsync().get(10, TimeUnit.SECONDS);
    assertFalse(get(key).getHeld());

    long token =
        client
            .withLockAsync(
                key,
                (l, cancelled) ->
                    CompletableFuture.supplyAsync(
                        () -> {
                          assertTrue(get(key).getHeld());
                          return l.fencingToken();
                        }))
            .get(10, TimeUnit.SECONDS);
    assertTrue(token > lease.fencingToken());
    assertFalse(get(key).getHeld());

    // A failing stage: released, and the failure passed on as it is.
    ExecutionException e =
        assertThrows(
            ExecutionException.class,
            () ->
                client
                    .withLockAsync(
                        key,
                        (l, cancelled) ->
                            CompletableFuture.<Long>failedFuture(new IllegalStateException("boom")))
                    .get(10, TimeUnit.SECONDS));
    assertInstanceOf(IllegalStateException.class, e.getCause());
    assertFalse(get(key).getHeld());

    // Held elsewhere: NotAcquiredException, and the function does not run.
    try (LockSession holder = client.holdLock(key)) {
      ExecutionException na =
          assertThrows(
              ExecutionException.class,
              () ->
                  client
                      .withLockAsync(key, (l, c) -> { throw new AssertionError("ran"); })
                      .get(10, TimeUnit.SECONDS));
      assertInstanceOf(NotAcquiredException.class, na.getCause());
      assertTrue(holder.timeLeft().compareTo(Duration.ZERO) > 0);
    }
  }
}
