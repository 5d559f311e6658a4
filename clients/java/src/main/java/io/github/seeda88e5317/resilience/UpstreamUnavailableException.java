package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The upstream of an {@code ExecuteCall} gave no response ({@code UNAVAILABLE}/{@code
 * UPSTREAM_UNAVAILABLE}): the connection failed or broke on every attempt. The sidecar itself is
 * fine; a request that is not idempotent may or may not have reached the upstream.
 */
public class UpstreamUnavailableException extends SidecarException {
  private static final long serialVersionUID = 1L;

  UpstreamUnavailableException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
