package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.GetLamportRequest;
import io.github.seeda88e5317.resilience.v1.NextLamportRequest;
import io.github.seeda88e5317.resilience.v1.ObserveLamportRequest;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;

/**
 * A named Lamport clock kept by the sidecar and shared by every sidecar of the namespace on the same
 * store. Stamp what you send (or any event you want ordered) with {@link #stamp()}; pass the stamp
 * of what you receive to {@link #observe(long)}. If event a happened before event b, a's stamp is
 * lower than b's. Get one from {@link ResilienceClient#lamportClock(String)}.
 *
 * <pre>{@code
 * LamportClock clock = client.lamportClock("orders");
 * message.setStamp(clock.stamp());          // sending
 * long receivedAt = clock.observe(incoming.getStamp());   // receiving
 * }</pre>
 *
 * <p>Replicas using the same clock through their sidecars share one counter, so their stamps are
 * already ordered and unique; {@code observe} is for stamps from elsewhere (another namespace or
 * store, a system with its own Lamport clock). Values run from 1 to 2^63-1 and are never handed out
 * twice. Errors: {@link StoreUnavailableException} (retry after its delay), {@link
 * LimitExceededException} when the clock is exhausted, {@link InvalidArgumentException} for a bad
 * name or stamp. Thread-safe.
 */
public final class LamportClock {
  private final ResilienceClient client;
  private final String name;

  LamportClock(ResilienceClient client, String name) {
    this.client = client;
    this.name = Objects.requireNonNull(name, "name");
  }

  /** The clock's name (1-512 bytes of UTF-8 without control characters). */
  public String name() {
    return name;
  }

  /** A consecutive block of values, {@code first} to {@code last} inclusive. */
  public record Range(long first, long last) {}

  /** A new value, greater than every value this clock handed out before. */
  public long stamp() {
    return Async.await(stampAsync());
  }

  /** {@link #stamp()} without blocking. */
  public CompletableFuture<Long> stampAsync() {
    return reserveAsync(1).thenApply(Range::first);
  }

  /** {@code n} consecutive new values (1 to 100000) in one call: for stamping a batch. */
  public Range reserve(int n) {
    return Async.await(reserveAsync(n));
  }

  /** {@link #reserve(int)} without blocking. */
  public CompletableFuture<Range> reserveAsync(int n) {
    return Async.unary(
            client
                .clocksFuture()
                .nextLamport(NextLamportRequest.newBuilder().setClock(name).setCount(n).build()))
        .thenApply(r -> new Range(r.getFirst(), r.getLast()));
  }

  /**
   * Merges the stamp of an incoming message (at most 2^63-2): the clock moves to max(current,
   * stamp) + 1, and that value, the stamp of the receive event, is returned.
   */
  public long observe(long stamp) {
    return Async.await(observeAsync(stamp));
  }

  /** {@link #observe(long)} without blocking. */
  public CompletableFuture<Long> observeAsync(long stamp) {
    return Async.unary(
            client
                .clocksFuture()
                .observeLamport(
                    ObserveLamportRequest.newBuilder().setClock(name).setTimestamp(stamp).build()))
        .thenApply(r -> r.getTimestamp());
  }

  /** The highest value handed out so far (0 if none), without advancing the clock. */
  public long current() {
    return Async.await(
        Async.unary(
                client.clocksFuture().getLamport(GetLamportRequest.newBuilder().setClock(name).build()))
            .thenApply(r -> r.getTimestamp()));
  }

  @Override
  public String toString() {
    return "LamportClock{" + name + "}";
  }
}
