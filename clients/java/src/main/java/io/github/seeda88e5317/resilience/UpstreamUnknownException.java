package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The upstream named in the request is not configured in the sidecar ({@code UPSTREAM_UNKNOWN}).
 */
public class UpstreamUnknownException extends SidecarException {
  private static final long serialVersionUID = 1L;

  UpstreamUnknownException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
