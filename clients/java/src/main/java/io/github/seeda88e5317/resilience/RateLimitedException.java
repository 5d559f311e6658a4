package io.github.seeda88e5317.resilience;

import java.time.Duration;

/**
 * A rate-limited call did not run: its cost did not fit within the wait (as resilience4j's {@code
 * RequestNotPermitted}). An expected outcome, not a sidecar error: try again after {@link
 * #retryAfter()}.
 */
public class RateLimitedException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final String limiter;
  private final String key;
  private final long cost;
  private final transient RateDecision decision;

  RateLimitedException(String limiter, String key, long cost, RateDecision decision) {
    super(
        "resilience: rate limited: limiter \""
            + limiter
            + "\" key \""
            + key
            + "\": cost "
            + cost
            + " does not fit; retry after "
            + decision.retryAfter().toMillis()
            + "ms");
    this.limiter = limiter;
    this.key = key;
    this.cost = cost;
    this.decision = decision;
  }

  public String limiter() {
    return limiter;
  }

  public String key() {
    return key;
  }

  public long cost() {
    return cost;
  }

  /** How long until the cost fits if no one else takes from the key. */
  public Duration retryAfter() {
    return decision.retryAfter();
  }

  /** The sidecar's whole answer. */
  public RateDecision decision() {
    return decision;
  }
}
