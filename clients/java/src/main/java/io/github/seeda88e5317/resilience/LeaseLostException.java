package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;
import java.time.Duration;
import java.util.Map;

/**
 * The lease is no longer held ({@code FAILED_PRECONDITION}/{@code LEASE_LOST}): it expired, was
 * released, or belongs to someone else. For a lock, the critical section may have run without
 * exclusion; for an idempotency key, the operation may have run twice. The caller must know, so
 * this is never swallowed by the helpers.
 *
 * <p>When the loss was seen by the client ({@link LockSession}, {@link LockHandle}), {@link
 * #lossReason()} says why: {@code LEASE_LOST} (renewal found the lease gone), {@code MAX_HOLD},
 * {@code SHUTDOWN}, {@code STORE_UNAVAILABLE} (as the sidecar reports them), {@code STREAM_ENDED}
 * (the session stream broke, e.g. the sidecar died) or {@code RENEWAL_OVERDUE} (no renewal
 * confirmation arrived by the lease's local deadline, TTL minus the safety margin after the last
 * one, e.g. the sidecar is frozen). For an error returned by an RPC it is empty.
 */
public class LeaseLostException extends SidecarException {
  private static final long serialVersionUID = 1L;

  private final String lossReason;

  LeaseLostException(Status status, Metadata trailers, Details details, String lossReason) {
    super(status, trailers, details);
    this.lossReason = lossReason;
  }

  /** A lease loss seen by a session or handle (not an RPC error). */
  static LeaseLostException sessionLost(
      String key, String lossReason, String message, Throwable cause) {
    return sessionLost("lock", key, lossReason, message, cause);
  }

  /** A loss seen by a session of a lock or a permit ({@code what}). */
  static LeaseLostException sessionLost(
      String what, String key, String lossReason, String message, Throwable cause) {
    String description = what + " \"" + key + "\" lost (" + lossReason + ")";
    if (!message.isEmpty()) {
      description += ": " + message;
    }
    Status st = Status.FAILED_PRECONDITION.withDescription(description).withCause(cause);
    Details d = new Details(LEASE_LOST, Duration.ZERO, Map.of(), Map.of());
    return new LeaseLostException(st, new Metadata(), d, lossReason);
  }

  /** Why a session lost its lease (see the class comment); empty for an RPC error. */
  public String lossReason() {
    return lossReason;
  }
}
