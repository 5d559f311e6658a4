package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The request was refused as out of bounds ({@code INVALID_ARGUMENT}); {@link #violations()} names
 * every offending field (e.g. {@code "key"}, {@code "ttl"}). Nothing was changed: fix the request,
 * do not retry it.
 */
public class InvalidArgumentException extends SidecarException {
  private static final long serialVersionUID = 1L;

  InvalidArgumentException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
