package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * A remote timestamp is further ahead of the sidecar's clock than its max offset ({@code
 * FAILED_PRECONDITION}/{@code CLOCK_SKEW}); it was not adopted.
 */
public class ClockSkewException extends SidecarException {
  private static final long serialVersionUID = 1L;

  ClockSkewException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
