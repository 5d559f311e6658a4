package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * A key was reused with a different fingerprint ({@code FAILED_PRECONDITION}/{@code
 * IDEMPOTENCY_KEY_MISMATCH}): a different request needs a new key.
 */
public class IdempotencyKeyMismatchException extends SidecarException {
  private static final long serialVersionUID = 1L;

  IdempotencyKeyMismatchException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
