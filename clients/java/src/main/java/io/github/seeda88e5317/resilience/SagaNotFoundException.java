package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/** No saga with this id ({@code SAGA_NOT_FOUND}). */
public class SagaNotFoundException extends SidecarException {
  private static final long serialVersionUID = 1L;

  SagaNotFoundException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
