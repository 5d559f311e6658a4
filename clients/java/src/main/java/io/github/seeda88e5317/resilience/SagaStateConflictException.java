package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/** The saga is in a state that does not allow this call ({@code SAGA_STATE_CONFLICT}). */
public class SagaStateConflictException extends SidecarException {
  private static final long serialVersionUID = 1L;

  SagaStateConflictException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
