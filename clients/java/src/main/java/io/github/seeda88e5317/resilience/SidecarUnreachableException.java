package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The sidecar could not be reached: plain {@code UNAVAILABLE} without an {@code ErrorInfo} reason
 * (nothing listens at the address, the connection broke, or the channel is reconnecting after a
 * restart, and the call's connect wait ran out). Nothing reached the sidecar, or its answer was
 * lost. The client reconnects on its own, at most about one second apart ({@link
 * ResilienceClient.Builder#maxReconnectBackoff}), and a call waits for the connection up to {@link
 * ResilienceClient.Builder#connectWait} before it fails with this.
 */
public class SidecarUnreachableException extends SidecarException {
  private static final long serialVersionUID = 1L;

  SidecarUnreachableException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
