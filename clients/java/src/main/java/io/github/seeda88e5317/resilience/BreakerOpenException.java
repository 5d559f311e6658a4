package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * A circuit breaker is open ({@code UNAVAILABLE}/{@code BREAKER_OPEN}): the call was not made;
 * {@link #retryDelay()} says when the breaker admits calls again.
 */
public class BreakerOpenException extends SidecarException {
  private static final long serialVersionUID = 1L;

  BreakerOpenException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
