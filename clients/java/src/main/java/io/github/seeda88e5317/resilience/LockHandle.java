package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.AcquireLockRequest;
import io.github.seeda88e5317.resilience.v1.AcquireLockResponse;
import io.github.seeda88e5317.resilience.v1.Holder;
import io.github.seeda88e5317.resilience.v1.ReleaseLockRequest;
import io.github.seeda88e5317.resilience.v1.RenewLockRequest;
import java.time.Duration;
import java.time.Instant;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;

/**
 * An explicit lock handle, as redis-py's {@code Lock} and go-redsync's {@code Mutex} offer: {@link
 * #acquire()}, then {@link #fencingToken()}, {@link #locked()}, {@link #extend()}, and {@link
 * #release()}. Get one from {@link ResilienceClient#lock(String, LockOptions)}:
 *
 * <pre>{@code
 * LockHandle lock = client.lock("reports/daily", LockOptions.defaults().ttl(Duration.ofSeconds(30)));
 * lock.acquire();                                   // NotAcquiredException if someone holds it
 * try {
 *   report.write(lock.fencingToken());
 *   lock.extend();                                  // another TTL from now
 *   report.finish(lock.fencingToken());
 * } finally {
 *   lock.release();                                 // LeaseLostException if it had expired
 * }
 * }</pre>
 *
 * <p>Unlike a {@link LockSession}, nothing renews the lease in the background: it lasts the TTL
 * from the grant or the last {@link #extend()}, and is released by {@link #release()} or by its
 * expiry. {@link #locked()} is judged on this process's monotonic clock, never the sidecar's: the
 * lease counts as held until its local deadline, t + TTL - margin after the confirmation received
 * at t (margin = {@link LockOptions#safetyMargin}, max(TTL/10, 100 ms)).
 *
 * <p>Every method is bounded: acquiring by the wait timeout plus the client's call timeout (or the
 * caller's gRPC Context deadline), extending by the call timeout, releasing by the call timeout or
 * the local deadline, whichever comes first. A handle can be acquired again after a release.
 * Thread-safe; the {@code ...Async} variants return at once.
 */
public final class LockHandle implements AutoCloseable {
  private final ResilienceClient client;
  private final String key;
  private final LockOptions options;

  private io.github.seeda88e5317.resilience.v1.Lease grant; // null: not held
  private Lease lease; // the last lease acquired (kept after release, for its fencing token)
  private long confirmedNanos;
  private long deadlineNanos;
  private boolean acquiring;

  LockHandle(ResilienceClient client, String key, LockOptions options) {
    this.client = client;
    this.key = Objects.requireNonNull(key, "key");
    this.options = Objects.requireNonNull(options, "options");
  }

  /** The lock's key. */
  public String key() {
    return key;
  }

  /**
   * Takes the lock, waiting up to {@link LockOptions#waitTimeout} for a holder to let go.
   *
   * @return the lease (its fencing token is also {@link #fencingToken()})
   * @throws NotAcquiredException the wait ended without the lock
   * @throws IllegalStateException this handle holds the lock already
   * @throws SidecarException the sidecar refused or did not answer in time ({@link
   *     DeadlineExceededException})
   */
  public Lease acquire() {
    return Async.await(acquireAsync());
  }

  /** {@link #acquire()}, returning false instead of throwing {@link NotAcquiredException}. */
  public boolean tryAcquire() {
    try {
      acquire();
      return true;
    } catch (NotAcquiredException e) {
      return false;
    }
  }

  /** {@link #acquire()} without blocking. */
  public CompletableFuture<Lease> acquireAsync() {
    synchronized (this) {
      if (acquiring || heldNow()) {
        return CompletableFuture.failedFuture(
            new IllegalStateException("lock \"" + key + "\" is held or being acquired by this handle"));
      }
      acquiring = true;
      grant = null;
    }
    AcquireLockRequest.Builder req =
        AcquireLockRequest.newBuilder()
            .setKey(key)
            .setOwner(options.owner())
            .setWaitTimeout(Protos.duration(options.waitTimeout()));
    if (options.ttl() != null) {
      req.setTtl(Protos.duration(options.ttl()));
    }
    long bound = options.waitTimeout().plus(client.effectiveCallTimeout()).toNanos();
    Executor ctx = Tracing.currentContextExecutor();
    CompletableFuture<AcquireLockResponse> call =
        Async.unary(
            client
                .locksFuture()
                .withDeadlineAfter(bound, TimeUnit.NANOSECONDS)
                .acquireLock(req.build()));
    return call.handleAsync(
        (resp, err) -> {
          long now = System.nanoTime();
          synchronized (this) {
            acquiring = false;
            if (err != null) {
              throw LockSession.wrap(Async.unwrap(err));
            }
            if (!resp.getAcquired()) {
              Holder h = resp.getHolder();
              throw new CompletionException(
                  new NotAcquiredException(
                      key,
                      h.getOwner(),
                      h.getFencingToken(),
                      h.hasExpireTime() ? Protos.instant(h.getExpireTime()) : null));
            }
            grant = resp.getLease();
            lease =
                new Lease(
                    grant.getKey(),
                    grant.getFencingToken(),
                    Protos.instant(grant.getExpireTime()),
                    grant.getOwner());
            confirmed(now, options.effectiveTtl());
            return lease;
          }
        },
        ctx);
  }

  /**
   * Whether this handle holds the lock: acquired, not released, and its local deadline not passed.
   * No call to the sidecar.
   */
  public synchronized boolean locked() {
    return heldNow();
  }

  private boolean heldNow() {
    return grant != null && deadlineNanos - System.nanoTime() > 0;
  }

  /**
   * The fencing token of the lease last acquired (also after its release): pass it to the
   * resource the lock protects.
   *
   * @throws IllegalStateException the handle never acquired the lock
   */
  public synchronized long fencingToken() {
    if (lease == null) {
      throw new IllegalStateException("lock \"" + key + "\" was never acquired by this handle");
    }
    return lease.fencingToken();
  }

  /** The lease last acquired, or null if none was (its expiry is the grant's). */
  public synchronized Lease lease() {
    return lease;
  }

  /** The time left until the local deadline (zero or negative when not held). */
  public synchronized Duration timeLeft() {
    return grant == null ? Duration.ZERO : Duration.ofNanos(deadlineNanos - System.nanoTime());
  }

  /**
   * Extends the lease by the handle's TTL from now (the TTL of {@link LockOptions}, 10 s by
   * default).
   *
   * @return the new expiry as the sidecar reports it
   * @throws LeaseLostException the lease expired or was taken over (the sidecar says {@code
   *     LEASE_LOST}), or its local deadline passed ({@code RENEWAL_OVERDUE}): stop writing
   * @throws IllegalStateException the handle does not hold the lock (never acquired, or released)
   */
  public Instant extend() {
    return Async.await(extendAsync(options.effectiveTtl()));
  }

  /** {@link #extend()} by {@code ttl} (100 ms to 24 h) instead of the handle's TTL. */
  public Instant extend(Duration ttl) {
    return Async.await(extendAsync(ttl));
  }

  /** {@link #extend(Duration)} without blocking. */
  public CompletableFuture<Instant> extendAsync(Duration ttl) {
    Objects.requireNonNull(ttl, "ttl");
    io.github.seeda88e5317.resilience.v1.Lease g;
    synchronized (this) {
      CompletableFuture<Instant> refused = checkHeld("extend");
      if (refused != null) {
        return refused;
      }
      g = grant;
    }
    Executor ctx = Tracing.currentContextExecutor();
    return Async.unary(
            client
                .locksFuture()
                .renewLock(
                    RenewLockRequest.newBuilder()
                        .setKey(key)
                        .setLeaseId(g.getLeaseId())
                        .setTtl(Protos.duration(ttl))
                        .build()))
        .handleAsync(
            (resp, err) -> {
              long now = System.nanoTime();
              synchronized (this) {
                if (err != null) {
                  Throwable t = Async.unwrap(err);
                  if (t instanceof LeaseLostException && grant == g) {
                    grant = null;
                  }
                  throw LockSession.wrap(t);
                }
                if (grant == g) {
                  confirmed(now, ttl);
                }
                return Protos.instant(resp.getExpireTime());
              }
            },
            ctx);
  }

  /**
   * Releases the lock, waiting for the sidecar's confirmation at most until the lease's local
   * deadline or the client's call timeout, whichever comes first. {@link #locked()} is false
   * afterwards, whatever the outcome.
   *
   * @throws LeaseLostException the lease had expired or been taken over ({@code LEASE_LOST}), or
   *     its local deadline passed ({@code RENEWAL_OVERDUE}): the work done under it may have run
   *     without exclusion
   * @throws ReleaseUnconfirmedException the sidecar did not confirm in time; the lock frees itself
   *     when the lease expires
   * @throws IllegalStateException the handle does not hold the lock
   */
  public void release() {
    Async.await(releaseAsync());
  }

  /** {@link #release()} without blocking. */
  public CompletableFuture<Void> releaseAsync() {
    io.github.seeda88e5317.resilience.v1.Lease g;
    long bound;
    synchronized (this) {
      CompletableFuture<Void> refused = checkHeld("release");
      if (refused != null) {
        return refused;
      }
      g = grant;
      grant = null;
      bound =
          Math.min(deadlineNanos - System.nanoTime(), client.effectiveCallTimeout().toNanos());
    }
    long deadline = deadlineNanos;
    Executor ctx = Tracing.currentContextExecutor();
    return Async.unary(
            client
                .locksFuture()
                .withDeadlineAfter(bound, TimeUnit.NANOSECONDS)
                .releaseLock(
                    ReleaseLockRequest.newBuilder()
                        .setKey(key)
                        .setLeaseId(g.getLeaseId())
                        .build()))
        .handleAsync(
            (resp, err) -> {
              if (err == null) {
                return null;
              }
              Throwable t = Async.unwrap(err);
              if (t instanceof DeadlineExceededException) {
                if (System.nanoTime() - deadline >= 0) {
                  throw new CompletionException(overdue("its release was not confirmed in time"));
                }
                throw new CompletionException(
                    ReleaseUnconfirmedException.of(
                        client.address(), key, Duration.ofNanos(bound)));
              }
              throw LockSession.wrap(t);
            },
            ctx);
  }

  /** Releases the lock if this handle holds it; does nothing otherwise. */
  @Override
  public void close() {
    boolean held;
    synchronized (this) {
      held = grant != null;
    }
    if (held) {
      release();
    }
  }

  /** Null when the lease is held; else a failed future (and the lease forgotten if overdue). */
  private <T> CompletableFuture<T> checkHeld(String what) {
    if (grant == null) {
      return CompletableFuture.failedFuture(
          new IllegalStateException(
              "cannot " + what + " lock \"" + key + "\": this handle does not hold it"));
    }
    if (deadlineNanos - System.nanoTime() <= 0) {
      grant = null;
      return CompletableFuture.failedFuture(overdue("it was not extended in time"));
    }
    return null;
  }

  private LeaseLostException overdue(String why) {
    return LeaseLostException.sessionLost(
        key,
        LockSession.RENEWAL_OVERDUE,
        "the lease's local deadline (TTL minus the safety margin after the last confirmation)"
            + " passed: "
            + why,
        null);
  }

  private void confirmed(long now, Duration ttl) {
    confirmedNanos = now;
    deadlineNanos = now + ttl.minus(LockOptions.safetyMargin(ttl)).toNanos();
  }

  /** When the grant or the last extension was confirmed, as a {@link System#nanoTime()} value. */
  public synchronized long confirmedAtNanos() {
    return confirmedNanos;
  }

  @Override
  public synchronized String toString() {
    return "LockHandle{key=" + key + ", locked=" + heldNow() + "}";
  }
}
