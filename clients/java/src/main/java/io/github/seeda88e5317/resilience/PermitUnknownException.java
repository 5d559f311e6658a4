package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * A breaker permit that is not outstanding was reported ({@code FAILED_PRECONDITION}/{@code
 * PERMIT_UNKNOWN}): never issued, already reported, or expired (an expired permit was counted as a
 * failure). Every permit counts once.
 */
public class PermitUnknownException extends SidecarException {
  private static final long serialVersionUID = 1L;

  PermitUnknownException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
