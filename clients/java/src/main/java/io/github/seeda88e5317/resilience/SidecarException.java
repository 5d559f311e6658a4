package io.github.seeda88e5317.resilience;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusException;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * An error from the sidecar, with the details it carries decoded: the gRPC {@link #code()}, the
 * stable {@link #reason()} of its {@code google.rpc.ErrorInfo} (domain {@value #ERROR_DOMAIN}), the
 * {@link #retryDelay()} of its {@code google.rpc.RetryInfo} and the field {@link #violations()} of
 * its {@code google.rpc.BadRequest}.
 *
 * <p>It is a {@link StatusRuntimeException}, so code that catches gRPC errors still catches it. The
 * helpers of {@link ResilienceClient} throw it (as the subclass of its reason, e.g. {@link
 * LeaseLostException}); the raw stubs throw plain {@code StatusRuntimeException}s, which {@link
 * #from(Throwable)} decodes:
 *
 * <pre>{@code
 * try {
 *   client.locks().releaseLock(request);
 * } catch (StatusRuntimeException e) {
 *   throw SidecarException.from(e); // LeaseLostException when the lease was lost
 * }
 * }</pre>
 */
public class SidecarException extends StatusRuntimeException {
  private static final long serialVersionUID = 1L;

  /** The {@code ErrorInfo} domain of the sidecar's errors. */
  public static final String ERROR_DOMAIN = "resilience.sidecar";

  /** Stable reasons, the same as {@link Reasons} (kept here for existing callers). */
  public static final String LEASE_LOST = Reasons.LEASE_LOST;

  public static final String IDEMPOTENCY_KEY_MISMATCH = Reasons.IDEMPOTENCY_KEY_MISMATCH;
  public static final String BREAKER_OPEN = Reasons.BREAKER_OPEN;
  public static final String UPSTREAM_UNKNOWN = Reasons.UPSTREAM_UNKNOWN;
  public static final String STORE_UNAVAILABLE = Reasons.STORE_UNAVAILABLE;
  public static final String SAGA_NOT_FOUND = Reasons.SAGA_NOT_FOUND;
  public static final String SAGA_STATE_CONFLICT = Reasons.SAGA_STATE_CONFLICT;
  public static final String LIMIT_EXCEEDED = Reasons.LIMIT_EXCEEDED;
  public static final String CLOCK_SKEW = Reasons.CLOCK_SKEW;
  public static final String SHUTTING_DOWN = Reasons.SHUTTING_DOWN;
  public static final String TOPIC_UNKNOWN = Reasons.TOPIC_UNKNOWN;
  public static final String PERMIT_UNKNOWN = Reasons.PERMIT_UNKNOWN;
  public static final String UPSTREAM_UNAVAILABLE = Reasons.UPSTREAM_UNAVAILABLE;
  public static final String UPSTREAM_TIMEOUT = Reasons.UPSTREAM_TIMEOUT;

  /** Store states that say more than {@value #STORE_UNAVAILABLE}: {@link StoreUnavailableException}. */
  public static final String STORE_FULL = Reasons.STORE_FULL;

  public static final String STORE_READ_ONLY = Reasons.STORE_READ_ONLY;
  public static final String REPLICATION_SHORTFALL = Reasons.REPLICATION_SHORTFALL;

  private final String reason;
  private final Duration retryDelay;
  private final Map<String, String> violations;
  private final Map<String, String> errorMetadata;

  /** Decoded status details. */
  record Details(
      String reason,
      Duration retryDelay,
      Map<String, String> violations,
      Map<String, String> errorMetadata) {
    static final Details NONE = new Details("", Duration.ZERO, Map.of(), Map.of());
  }

  SidecarException(Status status, Metadata trailers, Details details) {
    super(status, trailers);
    this.reason = details.reason();
    this.retryDelay = details.retryDelay();
    this.violations = details.violations();
    this.errorMetadata = details.errorMetadata();
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return getStatus().getCode();
  }

  /** The ErrorInfo reason, e.g. {@value #LEASE_LOST}; empty when the error carries none. */
  public String reason() {
    return reason;
  }

  /** The delay the sidecar suggests before a retry (RetryInfo); {@link Duration#ZERO} if none. */
  public Duration retryDelay() {
    return retryDelay;
  }

  /**
   * Field name to description, for INVALID_ARGUMENT (BadRequest field violations); empty otherwise.
   * Unmodifiable.
   */
  public Map<String, String> violations() {
    return violations;
  }

  /** The ErrorInfo metadata (e.g. {@code breaker}, {@code state}); empty if none. Unmodifiable. */
  public Map<String, String> errorMetadata() {
    return errorMetadata;
  }

  /** {@link #errorMetadata()}: the name the other clients use ({@code Error.Metadata} in Go). */
  public Map<String, String> metadata() {
    return errorMetadata;
  }

  /** The status description, as the sidecar wrote it. */
  public String description() {
    String d = getStatus().getDescription();
    return d == null ? "" : d;
  }

  @Override
  public String getMessage() {
    StringBuilder b = new StringBuilder("resilience: ").append(code());
    if (!reason.isEmpty()) {
      b.append(' ').append(reason);
    }
    b.append(": ").append(description());
    Throwable cause = getStatus().getCause();
    if (cause != null && cause.getMessage() != null) {
      b.append(" (").append(cause.getMessage()).append(')');
    }
    return b.toString();
  }

  /**
   * Decodes an error from a call to the sidecar into the exception of its ErrorInfo reason (one
   * class per reason of {@link Reasons#ALL}, e.g. {@link LeaseLostException}, {@link
   * UpstreamUnknownException}); without a known reason, into the class of its code: {@link
   * InvalidArgumentException}, {@link SidecarUnreachableException} (UNAVAILABLE), {@link
   * DeadlineExceededException}, or a plain {@code SidecarException}. A {@code SidecarException} is returned as it is; an exception that is
   * not a gRPC status is wrapped with code UNKNOWN and kept as the cause.
   */
  public static SidecarException from(Throwable t) {
    if (t instanceof SidecarException e) {
      return e;
    }
    Status status;
    Metadata trailers;
    if (t instanceof StatusRuntimeException e) {
      status = e.getStatus();
      trailers = e.getTrailers();
    } else if (t instanceof StatusException e) {
      status = e.getStatus();
      trailers = e.getTrailers();
    } else {
      status = Status.fromThrowable(t);
      trailers = Status.trailersFromThrowable(t);
    }
    if (status.getCause() == null) {
      status = status.withCause(t);
    }
    Details details = decode(status, trailers);
    return create(status, trailers, details);
  }

  /**
   * The exception of an error: the class of its ErrorInfo reason first (whatever the code: {@code
   * UPSTREAM_UNKNOWN} comes as INVALID_ARGUMENT, {@code UPSTREAM_TIMEOUT} as DEADLINE_EXCEEDED),
   * then, for errors without a known reason, the class of the code.
   */
  static SidecarException create(Status status, Metadata trailers, Details d) {
    SidecarException byReason =
        switch (d.reason()) {
          case Reasons.LEASE_LOST -> new LeaseLostException(status, trailers, d, "");
          case Reasons.IDEMPOTENCY_KEY_MISMATCH ->
              new IdempotencyKeyMismatchException(status, trailers, d);
          case Reasons.STORE_UNAVAILABLE -> new StoreUnavailableException(status, trailers, d);
          case Reasons.STORE_FULL -> new StoreFullException(status, trailers, d);
          case Reasons.STORE_READ_ONLY -> new StoreReadOnlyException(status, trailers, d);
          case Reasons.REPLICATION_SHORTFALL ->
              new ReplicationShortfallException(status, trailers, d);
          case Reasons.BREAKER_OPEN -> new BreakerOpenException(status, trailers, d);
          case Reasons.UPSTREAM_UNKNOWN -> new UpstreamUnknownException(status, trailers, d);
          case Reasons.UPSTREAM_UNAVAILABLE ->
              new UpstreamUnavailableException(status, trailers, d);
          case Reasons.UPSTREAM_TIMEOUT -> new UpstreamTimeoutException(status, trailers, d);
          case Reasons.PERMIT_UNKNOWN -> new PermitUnknownException(status, trailers, d);
          case Reasons.SAGA_NOT_FOUND -> new SagaNotFoundException(status, trailers, d);
          case Reasons.SAGA_STATE_CONFLICT -> new SagaStateConflictException(status, trailers, d);
          case Reasons.LIMIT_EXCEEDED -> new LimitExceededException(status, trailers, d);
          case Reasons.CLOCK_SKEW -> new ClockSkewException(status, trailers, d);
          case Reasons.SHUTTING_DOWN -> new ShuttingDownException(status, trailers, d);
          case Reasons.TOPIC_UNKNOWN -> new TopicUnknownException(status, trailers, d);
          case Reasons.LIMITER_UNKNOWN -> new LimiterUnknownException(status, trailers, d);
          default -> null;
        };
    if (byReason != null) {
      return byReason;
    }
    return switch (status.getCode()) {
      case INVALID_ARGUMENT -> new InvalidArgumentException(status, trailers, d);
      case UNAVAILABLE ->
          d.reason().isEmpty()
              ? new SidecarUnreachableException(status, trailers, d)
              : new SidecarException(status, trailers, d);
      case DEADLINE_EXCEEDED -> new DeadlineExceededException(status, trailers, d);
      default -> new SidecarException(status, trailers, d);
    };
  }

  /** The same error with {@code context} put before its description. */
  SidecarException withContext(String context) {
    Status st = getStatus().withDescription(context + ": " + description());
    Details d = new Details(reason, retryDelay, violations, errorMetadata);
    return create(st, getTrailers(), d);
  }

  private static Details decode(Status status, Metadata trailers) {
    if (trailers == null) {
      return Details.NONE;
    }
    com.google.rpc.Status proto = StatusProto.fromStatusAndTrailers(status, trailers);
    String reason = "";
    Duration retry = Duration.ZERO;
    Map<String, String> violations = new LinkedHashMap<>();
    Map<String, String> meta = Map.of();
    for (Any any : proto.getDetailsList()) {
      try {
        if (any.is(ErrorInfo.class)) {
          ErrorInfo info = any.unpack(ErrorInfo.class);
          if (ERROR_DOMAIN.equals(info.getDomain())) {
            reason = info.getReason();
            meta = Collections.unmodifiableMap(new LinkedHashMap<>(info.getMetadataMap()));
          }
        } else if (any.is(RetryInfo.class)) {
          com.google.protobuf.Duration d = any.unpack(RetryInfo.class).getRetryDelay();
          retry = Duration.ofSeconds(d.getSeconds(), d.getNanos());
        } else if (any.is(BadRequest.class)) {
          for (BadRequest.FieldViolation v :
              any.unpack(BadRequest.class).getFieldViolationsList()) {
            violations.put(v.getField(), v.getDescription());
          }
        }
      } catch (InvalidProtocolBufferException ignored) {
        // A malformed detail is skipped; the status itself still says what happened.
      }
    }
    return new Details(reason, retry, Collections.unmodifiableMap(violations), meta);
  }
}
