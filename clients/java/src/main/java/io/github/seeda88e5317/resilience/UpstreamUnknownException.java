package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The upstream named in the request is not configured in the sidecar, or the path leaves its base
 * URL ({@code INVALID_ARGUMENT}/{@code UPSTREAM_UNKNOWN}; {@link #violations()} names the field).
 * It is an {@link InvalidArgumentException}: fix the request, do not retry it.
 */
public class UpstreamUnknownException extends InvalidArgumentException {
  private static final long serialVersionUID = 1L;

  UpstreamUnknownException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
