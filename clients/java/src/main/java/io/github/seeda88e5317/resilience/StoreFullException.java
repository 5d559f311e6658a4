package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The sidecar's store reached its memory limit and refuses writes ({@code UNAVAILABLE}/{@code
 * STORE_FULL}); retry after {@link #retryDelay()}. Nothing was changed.
 */
public class StoreFullException extends StoreUnavailableException {
  private static final long serialVersionUID = 1L;

  StoreFullException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
