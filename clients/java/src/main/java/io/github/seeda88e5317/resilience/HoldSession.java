package io.github.seeda88e5317.resilience;

import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.time.Instant;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;

/**
 * A lease held through a session stream ({@code HoldLock} for {@link LockSession}, {@code
 * HoldPermit} for {@link PermitSession}): the sidecar renews the lease every TTL/3 while the session
 * is open, and releases it on {@link #close()} or when this process dies (the stream ends). Both
 * kinds share this code, and so the same client-side safety.
 *
 * <p>The session keeps the lease's <b>local deadline</b> on this process's monotonic clock
 * ({@link System#nanoTime()}): each time the grant or a renewal confirmation is received (at t),
 * the deadline becomes t + TTL - margin, margin = max(TTL/10, 100 ms) ({@link
 * LockOptions#safetyMargin}). The TTL is the one the session asked for; the sidecar's clock is
 * never used.
 *
 * <p>{@link #lost()} completes the moment the lease is lost: the sidecar reports it ({@code
 * LEASE_LOST}, {@code MAX_HOLD}, {@code SHUTDOWN}, {@code STORE_UNAVAILABLE}), the stream breaks
 * ({@code STREAM_ENDED}), or the local deadline passes without a newer confirmation ({@code
 * RENEWAL_OVERDUE}: the sidecar is frozen or unreachable, and the lease is about to expire in the
 * store, before anyone else can take it). After a loss, stop writing: {@link #close()} then throws
 * {@link LeaseLostException}.
 *
 * <p>Thread-safe.
 *
 * @param <Req> the stream's request message
 * @param <Resp> the stream's response message
 */
abstract class HoldSession<Req, Resp> implements AutoCloseable {
  static final String RENEWAL_OVERDUE = "RENEWAL_OVERDUE";
  static final String STREAM_ENDED = "STREAM_ENDED";

  /** What a response of the stream says, whichever the stream. */
  enum Kind {
    ACQUIRED,
    NOT_ACQUIRED,
    RENEWED,
    RELEASED,
    LOST,
    OTHER
  }

  /**
   * A response of the stream: its kind, the lease (ACQUIRED), the new expiry (RENEWED), the lost
   * reason without "REASON_" and message (LOST).
   */
  record Event(Kind kind, Lease lease, Instant expireTime, String lostReason, String lostMessage) {
    static Event of(Kind kind) {
      return new Event(kind, null, null, "", "");
    }
  }

  /** Opens the stream with this observer. */
  abstract void openCall(ClientResponseObserver<Req, Resp> observer);

  /** The first request: acquire. */
  abstract Req acquireRequest();

  /** The release request. */
  abstract Req releaseRequest();

  /** What a response says. */
  abstract Event event(Resp resp);

  /** The exception of a NOT_ACQUIRED first answer. */
  abstract RuntimeException notAcquired(Resp resp);

  /** The stream's RPC name, for messages. */
  abstract String rpc();

  /** "lock" or "permit", for messages. */
  abstract String what();

  final ResilienceClient client;
  final String key;
  final LockOptions options;
  private final Duration ttl;
  private final long validNanos; // ttl - margin: how long a confirmation keeps the lease ours

  private final CompletableFuture<Resp> first = new CompletableFuture<>();
  private final CompletableFuture<LeaseLostException> lost = new CompletableFuture<>();
  private final CompletableFuture<Void> ended = new CompletableFuture<>();
  private final Cancellation cancellation = new Cancellation(lost);

  private volatile ClientCallStreamObserver<Req> requests;
  private volatile boolean acquired;
  private volatile boolean released;
  private volatile boolean closing;
  private volatile boolean cancelledHere;
  private volatile long confirmedNanos;
  private volatile long deadlineNanos;
  private volatile Lease lease;
  private volatile Instant expireTime;
  private ScheduledFuture<?> watchdog;
  private boolean closed;

  HoldSession(ResilienceClient client, String key, LockOptions options) {
    this.client = client;
    this.key = Objects.requireNonNull(key, "key");
    this.options = options;
    this.ttl = options.effectiveTtl();
    this.validNanos = ttl.minus(LockOptions.safetyMargin(ttl)).toNanos();
  }

  /** Blocking open: {@link #start}, waited for; an interrupt cancels the acquire. */
  static <S extends HoldSession<?, ?>> S open(S s) {
    CompletableFuture<Void> f = s.start();
    try {
      f.get(); // bounded by the acquire timer
      return s;
    } catch (InterruptedException e) {
      s.cancel("interrupted");
      Thread.currentThread().interrupt();
      throw SidecarException.from(
          Status.CANCELLED
              .withDescription("interrupted while acquiring " + s.what() + " \"" + s.key + "\"")
              .withCause(e)
              .asRuntimeException());
    } catch (ExecutionException e) {
      throw Async.<RuntimeException>sneaky(Async.unwrap(e));
    }
  }

  /** Opens the session; the future completes once the lease is held (or fails as {@link #open}). */
  final CompletableFuture<Void> start() {
    Objects.requireNonNull(options, "options");
    // The acquire is bounded by the caller's deadline (a gRPC Context deadline, e.g. inside a
    // server call), or else by wait_timeout + the call timeout.
    long bound = options.waitTimeout().plus(client.effectiveCallTimeout()).toNanos();
    Deadline callerDeadline = Context.current().getDeadline();
    if (callerDeadline != null) {
      bound = Math.min(bound, Math.max(0, callerDeadline.timeRemaining(TimeUnit.NANOSECONDS)));
    }
    // The session itself outlives the caller's deadline: it ends with close().
    Context.current().fork().run(() -> openCall(new Observer()));
    send(acquireRequest(), false);
    final long boundNanos = bound;
    ScheduledFuture<?> timer;
    try {
      timer =
          client
              .scheduler()
              .schedule(
                  () -> first.completeExceptionally(new AcquireTimedOut()),
                  boundNanos,
                  TimeUnit.NANOSECONDS);
    } catch (RejectedExecutionException e) {
      cancel("client closed");
      return CompletableFuture.failedFuture(clientClosed());
    }
    return first.handle(
        (resp, err) -> {
          timer.cancel(false);
          return afterFirst(resp, err, boundNanos);
        });
  }

  /** Timer marker: no answer to acquire in time. */
  private static final class AcquireTimedOut extends RuntimeException {
    private static final long serialVersionUID = 1L;

    AcquireTimedOut() {
      super(null, null, false, false);
    }
  }

  private Void afterFirst(Resp resp, Throwable err, long boundNanos) {
    if (err instanceof AcquireTimedOut) {
      cancel("no answer to acquire");
      throw SidecarException.from(
          Status.DEADLINE_EXCEEDED
              .withDescription(
                  "the sidecar at "
                      + client.address()
                      + " did not answer the "
                      + rpc()
                      + " acquire of \""
                      + key
                      + "\" within "
                      + TimeUnit.NANOSECONDS.toMillis(boundNanos)
                      + "ms")
              .asRuntimeException());
    }
    if (err != null) {
      throw SidecarException.from(Async.unwrap(err));
    }
    Kind kind = event(resp).kind();
    switch (kind) {
      case ACQUIRED -> {
        // Set by the observer before `first` completed.
      }
      case NOT_ACQUIRED -> {
        cancel("not acquired");
        throw notAcquired(resp);
      }
      default -> {
        cancel("unexpected first event");
        throw SidecarException.from(
            Status.INTERNAL
                .withDescription("unexpected first " + rpc() + " event " + kind)
                .asRuntimeException());
      }
    }
    synchronized (this) {
      if (!lost.isDone() && !closed) {
        try {
          armWatchdog(deadlineNanos - System.nanoTime());
        } catch (RejectedExecutionException e) { // the client is closing: so is this session
          cancel("client closed");
          throw clientClosed();
        }
      }
    }
    return null;
  }

  private SidecarException clientClosed() {
    return SidecarException.from(
        Status.CANCELLED
            .withDescription(
                "the client was closed while acquiring " + what() + " \"" + key + "\"")
            .asRuntimeException());
  }

  /** The lease as granted (for a permit, its key is the bulkhead's name). Its fencing token is fixed for the session. */
  public Lease lease() {
    return lease;
  }

  /** The lease's current expiry as the sidecar reports it, moved by each renewal. */
  public Instant expireTime() {
    return expireTime;
  }

  /**
   * When the last grant or renewal confirmation was received, as a {@link System#nanoTime()}
   * value. The local deadline is this plus TTL minus the safety margin.
   */
  public long confirmedAtNanos() {
    return confirmedNanos;
  }

  /**
   * The time left until the lease's local deadline (zero or negative once it passed): how long
   * work may go on if no further renewal arrived.
   */
  public Duration timeLeft() {
    return Duration.ofNanos(deadlineNanos - System.nanoTime());
  }

  /**
   * Completes with the cause when the lease is lost; never completes if the session ends without a
   * loss. Callbacks run on a gRPC or timer thread: keep them short. (A copy: completing it does not
   * affect the session.)
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
   * Releases the lease and ends the session, waiting for the sidecar to confirm at most until the
   * lease's local deadline or the client's call timeout, whichever comes first. Calling it again
   * does nothing.
   *
   * @throws LeaseLostException the lease was lost during the session (also when the local deadline
   *     passed while waiting for the confirmation: {@code RENEWAL_OVERDUE}): the work done under
   *     it may have run without exclusion
   * @throws ReleaseUnconfirmedException the sidecar did not confirm the release within the call
   *     timeout (the lease then ends by itself within its TTL)
   */
  @Override
  public void close() {
    CompletableFuture<Void> f = closeAsync();
    boolean interrupted = false;
    try {
      while (true) {
        try {
          f.get(); // bounded by the release timer
          return;
        } catch (InterruptedException e) {
          interrupted = true;
        } catch (ExecutionException e) {
          throw Async.<RuntimeException>sneaky(Async.unwrap(e));
        }
      }
    } finally {
      if (interrupted) {
        Thread.currentThread().interrupt();
      }
    }
  }

  /**
   * {@link #close()} without blocking: the future completes when the release is confirmed, or
   * fails with what {@code close()} throws. Calling it again returns a completed future.
   */
  public CompletableFuture<Void> closeAsync() {
    synchronized (this) {
      if (closed) {
        return CompletableFuture.completedFuture(null);
      }
      closed = true;
      if (watchdog != null) {
        watchdog.cancel(false);
      }
    }
    if (lost.isDone() || ended.isDone()) {
      cancel("session closed");
      return finished();
    }
    closing = true;
    send(releaseRequest(), true);
    long bound =
        Math.max(
            0,
            Math.min(
                deadlineNanos - System.nanoTime(), client.effectiveCallTimeout().toNanos()));
    CompletableFuture<Boolean> confirmed = new CompletableFuture<>();
    ended.thenRun(() -> confirmed.complete(true));
    ScheduledFuture<?> timer = null;
    try {
      timer =
          client
              .scheduler()
              .schedule(() -> confirmed.complete(false), bound, TimeUnit.NANOSECONDS);
    } catch (RejectedExecutionException e) {
      // The client is closing: its channel ends the stream, which completes `ended`.
    }
    ScheduledFuture<?> t = timer;
    return confirmed.thenCompose(
        ok -> {
          if (t != null) {
            t.cancel(false);
          }
          if (!ok) {
            if (System.nanoTime() - deadlineNanos >= 0) {
              markLost(RENEWAL_OVERDUE, overdueMessage(), null);
            }
            cancel("release not confirmed"); // the sidecar, if it wakes up, releases on the cancel
            if (!lost.isDone()) {
              return CompletableFuture.failedFuture(
                  ReleaseUnconfirmedException.of(
                      client.address(), what(), key, Duration.ofNanos(bound)));
            }
          }
          return finished();
        });
  }

  /** Completes normally, or with the session's loss (a fresh exception: the caller's trace). */
  private CompletableFuture<Void> finished() {
    LeaseLostException e = lost.getNow(null);
    if (e == null) {
      return CompletableFuture.completedFuture(null);
    }
    return CompletableFuture.failedFuture(
        LeaseLostException.sessionLost(what(), key, e.lossReason(), lossMessage(e), e));
  }

  private static String lossMessage(LeaseLostException e) {
    String d = e.description();
    int i = d.indexOf("): ");
    return i < 0 ? "" : d.substring(i + 3);
  }

  // ---- stream events -----------------------------------------------------------------------

  private final class Observer
      implements ClientResponseObserver<Req, Resp> {
    @Override
    public void beforeStart(ClientCallStreamObserver<Req> requestStream) {
      requests = requestStream;
    }

    @Override
    public void onNext(Resp resp) {
      Event ev = event(resp);
      switch (ev.kind()) {
        case ACQUIRED -> {
          lease = ev.lease();
          expireTime = lease.expireTime();
          confirmed(System.nanoTime());
          acquired = true;
        }
        case RENEWED -> {
          expireTime = ev.expireTime();
          confirmed(System.nanoTime());
        }
        case RELEASED -> released = true;
        case LOST -> markLost(ev.lostReason(), ev.lostMessage(), null);
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
      } else if (!released && !cancelledHere) {
        SidecarException e = SidecarException.from(t);
        markLost(STREAM_ENDED, "the session stream ended: " + e.getMessage(), e);
      }
      ended.complete(null);
    }

    @Override
    public void onCompleted() {
      if (!first.isDone()) {
        first.completeExceptionally(
            Status.INTERNAL
                .withDescription("the " + rpc() + " stream ended before answering acquire")
                .asRuntimeException());
      } else if (!released) {
        markLost(STREAM_ENDED, "the session stream ended without a release", null);
      }
      ended.complete(null);
    }
  }

  private void confirmed(long now) {
    confirmedNanos = now;
    deadlineNanos = now + validNanos;
  }

  private void markLost(String reason, String message, Throwable cause) {
    if (acquired) {
      lost.complete(LeaseLostException.sessionLost(what(), key, reason, message, cause));
    }
  }

  private String overdueMessage() {
    return "no renewal confirmation from the sidecar at "
        + client.address()
        + " within "
        + TimeUnit.NANOSECONDS.toMillis(validNanos)
        + "ms (TTL "
        + ttl.toMillis()
        + "ms minus the safety margin) of the last one; the lease expires in the store";
  }

  /** Runs at the local deadline: the lease is lost unless a confirmation moved the deadline. */
  private void checkDeadline() {
    if (lost.isDone() || ended.isDone() || closing) {
      return;
    }
    long left = deadlineNanos - System.nanoTime();
    if (left > 0) {
      synchronized (this) {
        if (!closed) {
          try {
            armWatchdog(left);
          } catch (RejectedExecutionException e) {
            // The client is closing: its channel ends the stream.
          }
        }
      }
      return;
    }
    markLost(RENEWAL_OVERDUE, overdueMessage(), null);
    cancel("renewal overdue");
  }

  private void armWatchdog(long delayNanos) {
    watchdog =
        client
            .scheduler()
            .schedule(this::checkDeadline, Math.max(0, delayNanos), TimeUnit.NANOSECONDS);
  }

  private synchronized void send(Req msg, boolean halfClose) {
    try {
      requests.onNext(msg);
      if (halfClose) {
        requests.onCompleted();
      }
    } catch (RuntimeException e) {
      // The stream already ended; the observer has been told why.
    }
  }

  synchronized void cancel(String why) {
    if (!ended.isDone()) {
      cancelledHere = true;
      requests.cancel("resilience: " + why, null);
    }
  }

  @Override
  public String toString() {
    return getClass().getSimpleName() + "{key=" + key + ", lost=" + isLost() + "}";
  }

  /** For withLockAsync and withPermitAsync: wraps a failure so that CompletableFuture passes it on unchanged. */
  static CompletionException wrap(Throwable t) {
    return t instanceof CompletionException c ? c : new CompletionException(t);
  }
}
