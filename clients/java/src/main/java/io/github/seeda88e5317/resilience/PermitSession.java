package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.HoldPermitRequest;
import io.github.seeda88e5317.resilience.v1.HoldPermitResponse;
import io.grpc.stub.ClientResponseObserver;
import java.util.concurrent.CompletableFuture;

/**
 * A bulkhead permit held through a HoldPermit session: one of {@code limit} permits of a semaphore
 * shared by every sidecar. The sidecar renews it every TTL/3 while the session is open and gives it
 * back on {@link #close()}, or when this process dies. Get one from {@link
 * ResilienceClient#holdPermit} and use it with try-with-resources.
 *
 * <p>A permit is a lease with exactly the lock session's safety (the same code: {@link
 * LockSession}'s): its local deadline on this process's monotonic clock, {@link #lost()} completing
 * with {@code RENEWAL_OVERDUE} when no renewal arrived by then (before the permit can expire in the
 * store and go to another caller), the bounded acquire and release. {@link #lease()}'s key is the
 * bulkhead's name.
 */
public final class PermitSession extends HoldSession<HoldPermitRequest, HoldPermitResponse> {
  private final int limit;

  private PermitSession(ResilienceClient client, String name, int limit, LockOptions options) {
    super(client, name, options);
    this.limit = limit;
  }

  /** Blocking open; an interrupt cancels the acquire. */
  static PermitSession open(ResilienceClient client, String name, int limit, LockOptions options) {
    return HoldSession.open(new PermitSession(client, name, limit, options));
  }

  /** Opens a session; the future completes once a permit is held (or fails as {@link #open}). */
  static CompletableFuture<PermitSession> openAsync(
      ResilienceClient client, String name, int limit, LockOptions options) {
    PermitSession s = new PermitSession(client, name, limit, options);
    return s.start().thenApply(v -> s);
  }

  /** The bulkhead's name. */
  public String name() {
    return key;
  }

  /** The limit this session asked for. */
  public int limit() {
    return limit;
  }

  @Override
  void openCall(ClientResponseObserver<HoldPermitRequest, HoldPermitResponse> observer) {
    client.semaphoresAsync().holdPermit(observer);
  }

  @Override
  HoldPermitRequest acquireRequest() {
    HoldPermitRequest.Acquire.Builder acquire =
        HoldPermitRequest.Acquire.newBuilder()
            .setName(key)
            .setLimit(limit)
            .setOwner(options.owner())
            .setWaitTimeout(Protos.duration(options.waitTimeout()))
            .setMaxHold(Protos.duration(options.maxHold()));
    if (options.ttl() != null) {
      acquire.setTtl(Protos.duration(options.ttl()));
    }
    return HoldPermitRequest.newBuilder().setAcquire(acquire).build();
  }

  @Override
  HoldPermitRequest releaseRequest() {
    return HoldPermitRequest.newBuilder()
        .setRelease(HoldPermitRequest.Release.getDefaultInstance())
        .build();
  }

  @Override
  Event event(HoldPermitResponse resp) {
    return switch (resp.getEventCase()) {
      case ACQUIRED -> {
        var p = resp.getAcquired();
        yield new Event(
            Kind.ACQUIRED,
            new Lease(
                p.getName(), p.getFencingToken(), Protos.instant(p.getExpireTime()), p.getOwner()),
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
  RuntimeException notAcquired(HoldPermitResponse resp) {
    return new BulkheadFullException(
        key, resp.getNotAcquired().getHeld(), resp.getNotAcquired().getLimit());
  }

  @Override
  String rpc() {
    return "HoldPermit";
  }

  @Override
  String what() {
    return "permit";
  }
}
