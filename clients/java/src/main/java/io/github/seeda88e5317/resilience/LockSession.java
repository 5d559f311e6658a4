package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.HoldLockRequest;
import io.github.seeda88e5317.resilience.v1.HoldLockResponse;
import io.github.seeda88e5317.resilience.v1.Holder;
import io.grpc.stub.ClientResponseObserver;
import java.util.concurrent.CompletableFuture;

/**
 * A lock held through a HoldLock session: the sidecar renews the lease every TTL/3 while the
 * session is open, and releases it on {@link #close()} or when this process dies (the stream ends).
 * Get one from {@link ResilienceClient#holdLock} and use it with try-with-resources.
 *
 * <p>The session keeps the lease's <b>local deadline</b> on this process's monotonic clock
 * ({@link System#nanoTime()}): each time the grant or a renewal confirmation is received (at t),
 * the deadline becomes t + TTL - margin, margin = max(TTL/10, 100 ms) ({@link
 * LockOptions#safetyMargin}). The TTL is the one the session asked for; the sidecar's clock is
 * never used.
 *
 * <p>{@link #lost()} completes the moment the lease is lost: the sidecar reports it ({@code
 * LEASE_LOST}, {@code MAX_HOLD}, {@code SHUTDOWN}, {@code STORE_UNAVAILABLE}), the stream breaks
 * ({@value #STREAM_ENDED}), or the local deadline passes without a newer confirmation ({@value
 * #RENEWAL_OVERDUE}: the sidecar is frozen or unreachable, and the lease is about to expire in the
 * store, before anyone else can take the lock). After a loss, stop writing: {@link #close()} then
 * throws {@link LeaseLostException}.
 *
 * <p>Thread-safe. The session code is shared with {@link PermitSession} (bulkhead permits).
 */
public final class LockSession extends HoldSession<HoldLockRequest, HoldLockResponse> {
  /** Loss reason: no grant or renewal confirmation was received by the lease's local deadline. */
  public static final String RENEWAL_OVERDUE = HoldSession.RENEWAL_OVERDUE;

  /** Loss reason: the session stream ended (the sidecar died, or the connection broke). */
  public static final String STREAM_ENDED = HoldSession.STREAM_ENDED;

  private LockSession(ResilienceClient client, String key, LockOptions options) {
    super(client, key, options);
  }

  /** Blocking open; an interrupt cancels the acquire. */
  static LockSession open(ResilienceClient client, String key, LockOptions options) {
    return HoldSession.open(new LockSession(client, key, options));
  }

  /** Opens a session; the future completes once the lock is held (or fails as {@link #open}). */
  static CompletableFuture<LockSession> openAsync(
      ResilienceClient client, String key, LockOptions options) {
    LockSession s = new LockSession(client, key, options);
    return s.start().thenApply(v -> s);
  }

  @Override
  void openCall(ClientResponseObserver<HoldLockRequest, HoldLockResponse> observer) {
    client.locksAsync().holdLock(observer);
  }

  @Override
  HoldLockRequest acquireRequest() {
    HoldLockRequest.Acquire.Builder acquire =
        HoldLockRequest.Acquire.newBuilder()
            .setKey(key)
            .setOwner(options.owner())
            .setWaitTimeout(Protos.duration(options.waitTimeout()))
            .setMaxHold(Protos.duration(options.maxHold()));
    if (options.ttl() != null) {
      acquire.setTtl(Protos.duration(options.ttl()));
    }
    return HoldLockRequest.newBuilder().setAcquire(acquire).build();
  }

  @Override
  HoldLockRequest releaseRequest() {
    return HoldLockRequest.newBuilder()
        .setRelease(HoldLockRequest.Release.getDefaultInstance())
        .build();
  }

  @Override
  Event event(HoldLockResponse resp) {
    return switch (resp.getEventCase()) {
      case ACQUIRED -> {
        var l = resp.getAcquired();
        yield new Event(
            Kind.ACQUIRED,
            new Lease(
                l.getKey(), l.getFencingToken(), Protos.instant(l.getExpireTime()), l.getOwner()),
            null,
            "",
            "");
      }
      case NOT_ACQUIRED -> Event.of(Kind.NOT_ACQUIRED);
      case RENEWED ->
          new Event(
              Kind.RENEWED, null, Protos.instant(resp.getRenewed().getExpireTime()), "", "");
      case RELEASED -> Event.of(Kind.RELEASED);
      case LOST ->
          new Event(
              Kind.LOST,
              null,
              null,
              resp.getLost().getReason().name().replaceFirst("^REASON_", ""),
              resp.getLost().getMessage());
      default -> Event.of(Kind.OTHER);
    };
  }

  @Override
  RuntimeException notAcquired(HoldLockResponse resp) {
    Holder h = resp.getNotAcquired().getHolder();
    return new NotAcquiredException(
        key,
        h.getOwner(),
        h.getFencingToken(),
        h.hasExpireTime() ? Protos.instant(h.getExpireTime()) : null);
  }

  @Override
  String rpc() {
    return "HoldLock";
  }

  @Override
  String what() {
    return "lock";
  }
}
