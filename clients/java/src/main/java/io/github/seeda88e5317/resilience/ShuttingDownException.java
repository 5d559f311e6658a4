package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The sidecar is shutting down ({@code UNAVAILABLE}/{@code SHUTTING_DOWN}): retry, on another
 * instance if there is one.
 */
public class ShuttingDownException extends SidecarException {
  private static final long serialVersionUID = 1L;

  ShuttingDownException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
