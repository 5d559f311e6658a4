package io.github.seeda88e5317.resilience.spring.testapp;

import io.github.seeda88e5317.resilience.Lease;
import io.github.seeda88e5317.resilience.spring.CurrentLock;
import io.github.seeda88e5317.resilience.spring.Idempotent;
import io.github.seeda88e5317.resilience.spring.WithLock;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.springframework.stereotype.Service;

/** Annotated methods for the annotation tests. */
@Service
public class TestService {

  /** What {@link #charge} returns; stored as JSON. */
  public record Receipt(String orderId, long cents, int run) {}

  /** A request of {@link #charge}. */
  public record ChargeRequest(String orderId, long cents) {}

  // Reached through methods only: the test holds the Spring proxy, whose own fields are unset.
  private final AtomicInteger charges = new AtomicInteger();
  private final AtomicInteger failing = new AtomicInteger();
  private volatile CountDownLatch lockedStarted = new CountDownLatch(1);
  private volatile CountDownLatch lockedRelease = new CountDownLatch(1);

  public int charges() {
    return charges.get();
  }

  public int failing() {
    return failing.get();
  }

  public void resetFailing() {
    failing.set(0);
  }

  /** Makes the next {@link #locked} call wait for {@link #releaseLocked}. */
  public void armLocked() {
    lockedStarted = new CountDownLatch(1);
    lockedRelease = new CountDownLatch(1);
  }

  public boolean awaitLockedStarted() throws InterruptedException {
    return lockedStarted.await(20, TimeUnit.SECONDS);
  }

  public void releaseLocked() {
    lockedRelease.countDown();
  }

  @Idempotent(key = "#request.orderId()", fingerprint = "#request.cents()")
  public Receipt charge(ChargeRequest request) {
    return new Receipt(request.orderId(), request.cents(), charges.incrementAndGet());
  }

  /** Throws on its first run. */
  @Idempotent(key = "#id", name = "failing")
  public int failOnce(String id) {
    int n = failing.incrementAndGet();
    if (n == 1) {
      throw new IllegalArgumentException("first run fails");
    }
    return n;
  }

  /** Holds the lock "res/<name>" until the test releases it; returns the lease it ran under. */
  @WithLock(key = "'res/' + #name", ttl = "2s")
  public Lease locked(String name) throws InterruptedException {
    Lease lease = CurrentLock.lease().orElseThrow();
    lockedStarted.countDown();
    if (!lockedRelease.await(30, TimeUnit.SECONDS)) {
      throw new IllegalStateException("the test never released locked()");
    }
    return lease;
  }

  /** The lease of the lock "quick/<name>", held only while the method runs. */
  @WithLock(key = "'quick/' + #p0")
  public Lease quick(String name) {
    return CurrentLock.lease().orElseThrow();
  }

  /** A key expression that evaluates to null: refused before anything runs. */
  @WithLock(key = "#name")
  public void nullKey(String name) {
    throw new AssertionError("must not run");
  }
}
