package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;
import java.time.Duration;
import java.util.Map;

/**
 * A lock's release was sent but the sidecar did not confirm it within the bound (the client's call
 * timeout, or the lease's local deadline if sooner): the sidecar is frozen or overloaded. The helper
 * returned instead of waiting; the lock frees itself when its lease expires in the store (within
 * its TTL). Code {@code DEADLINE_EXCEEDED}, no reason.
 */
public class ReleaseUnconfirmedException extends DeadlineExceededException {
  private static final long serialVersionUID = 1L;

  ReleaseUnconfirmedException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }

  static ReleaseUnconfirmedException of(String address, String key, Duration waited) {
    return of(address, "lock", key, waited);
  }

  /** The release of a lock or a permit ({@code what}) was not confirmed. */
  static ReleaseUnconfirmedException of(String address, String what, String key, Duration waited) {
    Status st =
        Status.DEADLINE_EXCEEDED.withDescription(
            "the sidecar at "
                + address
                + " did not confirm the release of "
                + what
                + " \""
                + key
                + "\" within "
                + waited.toMillis()
                + "ms; the "
                + what
                + " frees itself when its lease expires");
    return new ReleaseUnconfirmedException(
        st, new Metadata(), new Details("", Duration.ZERO, Map.of(), Map.of()));
  }
}
