package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;
import java.time.Duration;
import java.util.Map;

/**
 * A circuit breaker refused the call ({@code UNAVAILABLE}/{@code BREAKER_OPEN}): the call was not
 * made. {@link #retryDelay()} says when the breaker admits calls again; {@link #breaker()} names
 * it. Thrown by {@link ResilienceClient#executeCall} and by a {@link BreakerGuard} that was refused
 * a permit.
 */
public class BreakerOpenException extends SidecarException {
  private static final long serialVersionUID = 1L;

  BreakerOpenException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }

  /** The refusal of a guard's AllowCall, as ExecuteCall reports it. */
  static BreakerOpenException refused(String breaker, String state, Duration retryAfter) {
    Status st =
        Status.UNAVAILABLE.withDescription(
            "breaker \"" + breaker + "\" is " + state + ": the call was not made");
    Details d =
        new Details(
            Reasons.BREAKER_OPEN, retryAfter, Map.of(), Map.of("breaker", breaker, "state", state));
    return new BreakerOpenException(st, new Metadata(), d);
  }

  /** The breaker's name (ErrorInfo metadata {@code breaker}). */
  public String breaker() {
    return errorMetadata().getOrDefault("breaker", "");
  }

  /** When asking again makes sense: {@link #retryDelay()}. */
  public Duration retryAfter() {
    return retryDelay();
  }
}
