package io.github.seeda88e5317.resilience;

import java.time.Duration;

/**
 * {@link ResilienceClient#idempotent} waited {@link IdempotentOptions#maxWait()} for a duplicate
 * that is running the operation, and it has not finished. Nothing ran here; retry later (after
 * {@link #retryAfter()}).
 */
public class IdempotencyInProgressException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final String key;
  private final int attempt;
  private final Duration retryAfter;

  IdempotencyInProgressException(String key, int attempt, Duration retryAfter, Duration waited) {
    super(
        "resilience: idempotency key \""
            + key
            + "\" still in progress (attempt "
            + attempt
            + ") after waiting "
            + waited.toMillis()
            + "ms");
    this.key = key;
    this.attempt = attempt;
    this.retryAfter = retryAfter;
  }

  public String key() {
    return key;
  }

  /** The running attempt's number (1 for the first). */
  public int attempt() {
    return attempt;
  }

  /** When the sidecar suggests to check again. */
  public Duration retryAfter() {
    return retryAfter;
  }
}
