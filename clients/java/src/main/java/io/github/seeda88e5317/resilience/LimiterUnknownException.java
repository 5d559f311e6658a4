package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The rate limiter is not one the sidecar's config declares ({@code NOT_FOUND}/{@code
 * LIMITER_UNKNOWN}): limiters are declared under {@code ratelimits}.
 */
public class LimiterUnknownException extends SidecarException {
  private static final long serialVersionUID = 1L;

  LimiterUnknownException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
