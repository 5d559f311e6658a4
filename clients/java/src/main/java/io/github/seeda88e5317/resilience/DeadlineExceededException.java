package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The call's deadline passed before the sidecar answered ({@code DEADLINE_EXCEEDED} without a
 * reason): the sidecar is frozen, overloaded, or the deadline was too short. The call may or may
 * not have taken effect.
 */
public class DeadlineExceededException extends SidecarException {
  private static final long serialVersionUID = 1L;

  DeadlineExceededException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
