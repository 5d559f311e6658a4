package io.github.seeda88e5317.resilience;

import java.time.Duration;
import java.util.Objects;

/**
 * Thrown by an {@link EventHandler} to have its event redelivered after {@link #retryAfter()}
 * rather than at once.
 */
public class RetryAfterException extends Exception {
  private static final long serialVersionUID = 1L;

  private final Duration retryAfter;

  public RetryAfterException(Duration retryAfter, String message, Throwable cause) {
    super(message, cause);
    this.retryAfter = Objects.requireNonNull(retryAfter, "retryAfter");
  }

  public RetryAfterException(Duration retryAfter) {
    this(retryAfter, "retry after " + retryAfter, null);
  }

  /** The delay before the event is delivered again (0 to 12 h). */
  public Duration retryAfter() {
    return retryAfter;
  }
}
