package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * A bound was passed ({@code LIMIT_EXCEEDED}), e.g. a Lamport clock would pass 2^63-1 or too many
 * breakers; nothing was changed.
 */
public class LimitExceededException extends SidecarException {
  private static final long serialVersionUID = 1L;

  LimitExceededException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
