package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The sidecar's store refuses writes ({@code UNAVAILABLE}/{@code STORE_READ_ONLY}): a read-only
 * replica, or it cannot persist. Retry after {@link #retryDelay()} (a failover or the fix).
 */
public class StoreReadOnlyException extends StoreUnavailableException {
  private static final long serialVersionUID = 1L;

  StoreReadOnlyException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
