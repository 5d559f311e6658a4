package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The upstream of an {@code ExecuteCall} did not answer within the call's timeout ({@code
 * DEADLINE_EXCEEDED}/{@code UPSTREAM_TIMEOUT}). Unlike {@link DeadlineExceededException}, the
 * sidecar answered: the upstream was too slow. The request may have been processed.
 */
public class UpstreamTimeoutException extends SidecarException {
  private static final long serialVersionUID = 1L;

  UpstreamTimeoutException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
