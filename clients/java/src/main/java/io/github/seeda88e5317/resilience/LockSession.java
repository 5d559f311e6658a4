package io.github.seeda88e5317.resilience;

import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.time.Instant;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import resilience.v1.Lock.HoldLockRequest;
import resilience.v1.Lock.HoldLockResponse;
import resilience.v1.Lock.Holder;

/**
 * A lock held through a HoldLock session: the sidecar renews the lease every TTL/3 while the
 * session is open, and releases it on {@link #close()} or when this process dies (the stream ends).
 * Get one from {@link ResilienceClient#holdLock} and use it with try-with-resources.
 *
 * <p>{@link #lost()} completes the moment the lease is lost: the sidecar reports it ({@code
 * LEASE_LOST}, {@code MAX_HOLD}, {@code SHUTDOWN}, {@code STORE_UNAVAILABLE}), the stream breaks
 * ({@code STREAM_ENDED}), or no renewal arrives within the TTL ({@code NOT_RENEWED}: the sidecar is
 * frozen or unreachable, and the lease is about to expire in the store). After a loss, stop
 * writing: {@link #close()} then throws {@link LeaseLostException}.
 *
 * <p>Thread-safe.
 */
public final class LockSession implements AutoCloseable {
  private final ResilienceClient client;
  private final String key;
  private final LockOptions options;
  private final Duration ttl;

  private final CompletableFuture<HoldLockResponse> first = new CompletableFuture<>();
  private final CompletableFuture<LeaseLostException> lost = new CompletableFuture<>();
  private final CompletableFuture<Void> ended = new CompletableFuture<>();
  private final Cancellation cancellation = new Cancellation(lost);

  private volatile ClientCallStreamObserver<HoldLockRequest> requests;
  private volatile boolean acquired;
  private volatile boolean released;
  private volatile boolean closing;
  private volatile long lastHeardNanos;
  private volatile Lease lease;
  private volatile Instant expireTime;
  private ScheduledFuture<?> watchdog;
  private boolean closed;

  private LockSession(ResilienceClient client, String key, LockOptions options) {
    this.client = client;
    this.key = key;
    this.options = options;
    this.ttl = options.effectiveTtl();
  }

  static LockSession open(ResilienceClient client, String key, LockOptions options) {
    Objects.requireNonNull(key, "key");
    Objects.requireNonNull(options, "options");
    LockSession s = new LockSession(client, key, options);
    client.locksAsync().holdLock(s.new Observer());
    HoldLockRequest.Acquire.Builder acquire =
        HoldLockRequest.Acquire.newBuilder()
            .setKey(key)
            .setOwner(options.owner())
            .setWaitTimeout(Protos.duration(options.waitTimeout()))
            .setMaxHold(Protos.duration(options.maxHold()));
    if (options.ttl() != null) {
      acquire.setTtl(Protos.duration(options.ttl()));
    }
    s.send(HoldLockRequest.newBuilder().setAcquire(acquire).build(), false);
    s.awaitAcquired();
    return s;
  }

  /** Waits for the answer to acquire: the lease, not_acquired, or an error. */
  private void awaitAcquired() {
    Duration bound = options.waitTimeout().plus(client.effectiveCallTimeout());
    HoldLockResponse resp;
    try {
      resp = first.get(bound.toNanos(), TimeUnit.NANOSECONDS);
    } catch (TimeoutException e) {
      cancel("no answer to acquire");
      throw SidecarException.from(
          Status.DEADLINE_EXCEEDED
              .withDescription(
                  "the sidecar at "
                      + client.address()
                      + " did not answer the HoldLock acquire of \""
                      + key
                      + "\" within "
                      + bound.toMillis()
                      + "ms")
              .asRuntimeException());
    } catch (InterruptedException e) {
      cancel("interrupted");
      Thread.currentThread().interrupt();
      throw SidecarException.from(
          Status.CANCELLED
              .withDescription("interrupted while acquiring lock \"" + key + "\"")
              .withCause(e)
              .asRuntimeException());
    } catch (ExecutionException e) {
      throw SidecarException.from(e.getCause());
    }
    switch (resp.getEventCase()) {
      case ACQUIRED -> {
        // Set by the observer before `first` completed.
      }
      case NOT_ACQUIRED -> {
        cancel("not acquired");
        Holder h = resp.getNotAcquired().getHolder();
        throw new NotAcquiredException(
            key,
            h.getOwner(),
            h.getFencingToken(),
            h.hasExpireTime() ? Protos.instant(h.getExpireTime()) : null);
      }
      default -> {
        cancel("unexpected first event");
        throw SidecarException.from(
            Status.INTERNAL
                .withDescription("unexpected first HoldLock event " + resp.getEventCase())
                .asRuntimeException());
      }
    }
    long period = Math.max(TimeUnit.MILLISECONDS.toNanos(20), ttl.toNanos() / 4);
    synchronized (this) {
      if (!lost.isDone() && !closed) {
        try {
          watchdog =
              client
                  .scheduler()
                  .scheduleAtFixedRate(this::checkRenewal, period, period, TimeUnit.NANOSECONDS);
        } catch (RejectedExecutionException e) { // the client is closing: so is this session
          cancel("client closed");
          throw SidecarException.from(
              Status.CANCELLED
                  .withDescription("the client was closed while acquiring lock \"" + key + "\"")
                  .asRuntimeException());
        }
      }
    }
  }

  /** The lease as granted. Its fencing token is fixed for the session. */
  public Lease lease() {
    return lease;
  }

  /** The lease's current expiry, moved by each renewal. */
  public Instant expireTime() {
    return expireTime;
  }

  /**
   * Completes with the cause when the lease is lost; never completes if the session ends without a
   * loss. Callbacks run on a gRPC or watchdog thread: keep them short. (A copy: completing it does
   * not affect the session.)
   */
  public CompletableFuture<LeaseLostException> lost() {
    return lost.copy();
  }

  /** Whether the lease was lost. */
  public boolean isLost() {
    return lost.isDone();
  }

  /** The session's lease loss as a cancellation signal (what {@code withLock} passes). */
  public Cancellation cancellation() {
    return cancellation;
  }

  /**
   * Releases the lock and ends the session, waiting (at most the client's call timeout) for the
   * sidecar to confirm. Calling it again does nothing.
   *
   * @throws LeaseLostException the lease was lost during the session: the work done under it may
   *     have run without exclusion
   * @throws SidecarException the sidecar did not confirm the release in time (the lock then frees
   *     itself within its TTL)
   */
  @Override
  public void close() {
    synchronized (this) {
      if (closed) {
        return;
      }
      closed = true;
      if (watchdog != null) {
        watchdog.cancel(false);
      }
    }
    if (!lost.isDone() && !ended.isDone()) {
      closing = true;
      send(
          HoldLockRequest.newBuilder()
              .setRelease(HoldLockRequest.Release.getDefaultInstance())
              .build(),
          true);
      Duration bound = client.effectiveCallTimeout();
      if (!awaitUninterruptibly(ended, bound)) {
        boolean lostBefore = lost.isDone();
        cancel("release not confirmed"); // the sidecar, if it wakes up, releases on the cancel
        if (!lostBefore) {
          throw SidecarException.from(
              Status.DEADLINE_EXCEEDED
                  .withDescription(
                      "the sidecar at "
                          + client.address()
                          + " did not confirm the release of \""
                          + key
                          + "\" within "
                          + bound.toMillis()
                          + "ms; the lock frees itself within its TTL")
                  .asRuntimeException());
        }
      }
    } else {
      cancel("session closed");
    }
    LeaseLostException e = lost.getNow(null);
    if (e != null) {
      // A fresh exception, so that its stack trace shows the caller of close().
      throw LeaseLostException.sessionLost(key, e.lossReason(), lossMessage(e), e);
    }
  }

  private static String lossMessage(LeaseLostException e) {
    String d = e.description();
    int i = d.indexOf("): ");
    return i < 0 ? "" : d.substring(i + 3);
  }

  // ---- stream events -----------------------------------------------------------------------

  private final class Observer
      implements ClientResponseObserver<HoldLockRequest, HoldLockResponse> {
    @Override
    public void beforeStart(ClientCallStreamObserver<HoldLockRequest> requestStream) {
      requests = requestStream;
    }

    @Override
    public void onNext(HoldLockResponse resp) {
      switch (resp.getEventCase()) {
        case ACQUIRED -> {
          var l = resp.getAcquired();
          lease =
              new Lease(
                  l.getKey(), l.getFencingToken(), Protos.instant(l.getExpireTime()), l.getOwner());
          expireTime = lease.expireTime();
          lastHeardNanos = System.nanoTime();
          acquired = true;
        }
        case RENEWED -> {
          expireTime = Protos.instant(resp.getRenewed().getExpireTime());
          lastHeardNanos = System.nanoTime();
        }
        case RELEASED -> released = true;
        case LOST -> {
          String reason = resp.getLost().getReason().name().replaceFirst("^REASON_", "");
          markLost(reason, resp.getLost().getMessage(), null);
        }
        default -> {
          // NOT_ACQUIRED is only ever first; unknown events are ignored.
        }
      }
      first.complete(resp);
    }

    @Override
    public void onError(Throwable t) {
      if (!first.isDone()) {
        first.completeExceptionally(t);
      } else if (!released) {
        SidecarException e = SidecarException.from(t);
        markLost("STREAM_ENDED", "the session stream ended: " + e.getMessage(), e);
      }
      ended.complete(null);
    }

    @Override
    public void onCompleted() {
      if (!first.isDone()) {
        first.completeExceptionally(
            Status.INTERNAL
                .withDescription("the HoldLock stream ended before answering acquire")
                .asRuntimeException());
      } else if (!released) {
        markLost("STREAM_ENDED", "the session stream ended without a release", null);
      }
      ended.complete(null);
    }
  }

  private void markLost(String reason, String message, Throwable cause) {
    if (acquired) {
      lost.complete(LeaseLostException.sessionLost(key, reason, message, cause));
    }
  }

  /** Declares the lease lost when no renewal arrived within the TTL. */
  private void checkRenewal() {
    if (lost.isDone() || ended.isDone() || closing) {
      return;
    }
    long silent = System.nanoTime() - lastHeardNanos;
    if (silent >= ttl.toNanos()) {
      markLost(
          "NOT_RENEWED",
          "no renewal from the sidecar at "
              + client.address()
              + " within the TTL ("
              + ttl.toMillis()
              + "ms); the lease expires in the store",
          null);
      cancel("lease not renewed");
    }
  }

  private synchronized void send(HoldLockRequest msg, boolean halfClose) {
    try {
      requests.onNext(msg);
      if (halfClose) {
        requests.onCompleted();
      }
    } catch (RuntimeException e) {
      // The stream already ended; the observer has been told why.
    }
  }

  private synchronized void cancel(String why) {
    if (!ended.isDone()) {
      requests.cancel("resilience: " + why, null);
    }
  }

  private static boolean awaitUninterruptibly(CompletableFuture<?> f, Duration bound) {
    long deadline = System.nanoTime() + bound.toNanos();
    boolean interrupted = false;
    try {
      while (true) {
        try {
          f.get(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
          return true;
        } catch (InterruptedException e) {
          interrupted = true;
        } catch (ExecutionException e) {
          return true;
        } catch (TimeoutException e) {
          return false;
        }
      }
    } finally {
      if (interrupted) {
        Thread.currentThread().interrupt();
      }
    }
  }

  @Override
  public String toString() {
    return "LockSession{key=" + key + ", lost=" + isLost() + "}";
  }
}
