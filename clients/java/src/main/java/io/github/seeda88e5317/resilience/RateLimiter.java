package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.TakeRequest;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

/**
 * One key of a rate limiter declared in the sidecar's config, shared by every sidecar, around any
 * function as resilience4j's {@code RateLimiter} decorates one. Get one from {@link
 * ResilienceClient#rateLimiter(String, String)}:
 *
 * <pre>{@code
 * RateLimiter api = client.rateLimiter("api", "tenant/42").withWaitTimeout(Duration.ofMillis(500));
 * Supplier<Result> search = api.decorateSupplier(() -> backend.search(q));
 * try {
 *   Result r = search.get();
 * } catch (RateLimitedException e) {
 *   retryLater(e.retryAfter());           // the cost did not fit: search did not run
 * }
 * }</pre>
 *
 * <p>Each call takes {@link #cost()} (default 1) from the key ({@code Take}); the sidecar waits up
 * to {@link #waitTimeout()} (default zero: try once) for it to fit, in arrival order per key, or
 * answers at once when it cannot fit in time. The call is bounded by the wait plus the client's call
 * timeout. Immutable and thread-safe.
 */
public final class RateLimiter {
  private final ResilienceClient client;
  private final String limiter;
  private final String key;
  private final long cost;
  private final Duration waitTimeout;

  RateLimiter(
      ResilienceClient client, String limiter, String key, long cost, Duration waitTimeout) {
    this.client = client;
    this.limiter = Objects.requireNonNull(limiter, "limiter");
    this.key = Objects.requireNonNull(key, "key");
    this.cost = cost;
    this.waitTimeout = Objects.requireNonNull(waitTimeout, "waitTimeout");
  }

  /** The limiter's name. */
  public String limiter() {
    return limiter;
  }

  /** The key counted ("" for the limiter as a whole). */
  public String key() {
    return key;
  }

  /** How much each call takes. */
  public long cost() {
    return cost;
  }

  /** How long the sidecar waits for the cost to fit. */
  public Duration waitTimeout() {
    return waitTimeout;
  }

  /** This limiter taking {@code cost} per call (1 to the limiter's max_cost). */
  public RateLimiter withCost(long cost) {
    return new RateLimiter(client, limiter, key, cost, waitTimeout);
  }

  /** This limiter waiting up to {@code waitTimeout} for the cost to fit (at most 10 min). */
  public RateLimiter withWaitTimeout(Duration waitTimeout) {
    return new RateLimiter(client, limiter, key, cost, waitTimeout);
  }

  /** This limiter on another key. */
  public RateLimiter withKey(String key) {
    return new RateLimiter(client, limiter, key, cost, waitTimeout);
  }

  /**
   * Takes the cost from the key and returns the decision; a refusal is a decision ({@code
   * allowed() == false}, with {@code retryAfter()}), not an exception.
   *
   * @throws LimiterUnknownException the limiter is not declared in the sidecar's config
   * @throws InvalidArgumentException a cost or wait out of bounds
   * @throws DeadlineExceededException no answer within the wait plus the call timeout
   */
  public RateDecision take() {
    TakeRequest.Builder req = TakeRequest.newBuilder().setLimiter(limiter).setKey(key).setCost(cost);
    if (!waitTimeout.isZero()) {
      req.setWaitTimeout(Protos.duration(waitTimeout));
    }
    long callNanos = waitTimeout.plus(client.effectiveCallTimeout()).toNanos();
    try {
      return RateDecision.of(
          client
              .rateLimits()
              .withDeadlineAfter(callNanos, TimeUnit.NANOSECONDS)
              .take(req.build()));
    } catch (StatusRuntimeException e) {
      throw SidecarException.from(e);
    }
  }

  /** Takes the cost; true when taken (as resilience4j's {@code acquirePermission}). */
  public boolean acquirePermission() {
    return take().allowed();
  }

  /** Takes the cost, or throws {@link RateLimitedException} with the retry delay. */
  private void permit() {
    RateDecision d = take();
    if (!d.allowed()) {
      throw new RateLimitedException(limiter, key, Math.max(cost, 1), d);
    }
  }

  /**
   * Runs {@code fn} once the cost was taken.
   *
   * @throws RateLimitedException the cost did not fit within the wait; {@code fn} did not run
   */
  public <T> T executeSupplier(Supplier<T> fn) {
    Objects.requireNonNull(fn, "fn");
    permit();
    return fn.get();
  }

  /** {@link #executeSupplier} for a Callable: its exception is thrown as it is. */
  public <T> T executeCallable(Callable<T> fn) throws Exception {
    Objects.requireNonNull(fn, "fn");
    permit();
    return fn.call();
  }

  /** {@link #executeSupplier} for a Runnable. */
  public void executeRunnable(Runnable fn) {
    Objects.requireNonNull(fn, "fn");
    permit();
    fn.run();
  }

  /** {@code fn} decorated: each {@code get()} is {@link #executeSupplier}. */
  public <T> Supplier<T> decorateSupplier(Supplier<T> fn) {
    Objects.requireNonNull(fn, "fn");
    return () -> executeSupplier(fn);
  }

  /** {@code fn} decorated: each {@code call()} is {@link #executeCallable}. */
  public <T> Callable<T> decorateCallable(Callable<T> fn) {
    Objects.requireNonNull(fn, "fn");
    return () -> executeCallable(fn);
  }

  /** {@code fn} decorated: each {@code run()} is {@link #executeRunnable}. */
  public Runnable decorateRunnable(Runnable fn) {
    Objects.requireNonNull(fn, "fn");
    return () -> executeRunnable(fn);
  }

  @Override
  public String toString() {
    return "RateLimiter{limiter=" + limiter + ", key=" + key + ", cost=" + cost + "}";
  }
}
