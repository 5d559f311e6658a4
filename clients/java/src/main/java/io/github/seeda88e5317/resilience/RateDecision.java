package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.TakeResponse;
import java.time.Duration;

/**
 * The answer of a Take ({@link RateLimiter#take}, {@link ResilienceClient#take}).
 *
 * @param allowed whether the cost was taken
 * @param remaining the largest cost a Take made now would be allowed
 * @param retryAfter set when refused: how long until the cost fits if no one else takes from the
 *     key
 * @param resetAfter how long until the key is back to full capacity
 * @param limit the limiter's capacity (burst, or limit per window)
 * @param degraded the store was down and the limiter's {@code store_down} mode answered
 * @param cached refused from the sidecar's memory of an exhausted key
 */
public record RateDecision(
    boolean allowed,
    long remaining,
    Duration retryAfter,
    Duration resetAfter,
    long limit,
    boolean degraded,
    boolean cached) {

  static RateDecision of(TakeResponse r) {
    return new RateDecision(
        r.getAllowed(),
        r.getRemaining(),
        Protos.duration(r.getRetryAfter()),
        Protos.duration(r.getResetAfter()),
        r.getLimit(),
        r.getDegraded(),
        r.getCached());
  }
}
