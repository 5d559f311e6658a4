package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The sidecar's store did not answer in time ({@code UNAVAILABLE}/{@code STORE_UNAVAILABLE}), or
 * answered that it cannot serve now: {@code STORE_FULL} (out of memory), {@code STORE_READ_ONLY}
 * (writes refused), {@code REPLICATION_SHORTFALL} (too few replicas acknowledged the write); {@link
 * #reason()} tells which and {@link #retryDelay()} says when to retry. Nothing was changed, or the
 * change is unknown for writes whose answer was lost.
 */
public class StoreUnavailableException extends SidecarException {
  private static final long serialVersionUID = 1L;

  StoreUnavailableException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
