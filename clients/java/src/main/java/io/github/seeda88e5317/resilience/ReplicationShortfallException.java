package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * Fewer store replicas than required acknowledged a write ({@code UNAVAILABLE}/{@code
 * REPLICATION_SHORTFALL}): treat it as not done, and retry after {@link #retryDelay()}.
 */
public class ReplicationShortfallException extends StoreUnavailableException {
  private static final long serialVersionUID = 1L;

  ReplicationShortfallException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
