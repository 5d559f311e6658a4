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

  /** Stable reasons (DESIGN.md section 3): clients may switch on them. */
  public static final String LEASE_LOST = "LEASE_LOST";

  public static final String IDEMPOTENCY_KEY_MISMATCH = "IDEMPOTENCY_KEY_MISMATCH";
  public static final String BREAKER_OPEN = "BREAKER_OPEN";
  public static final String UPSTREAM_UNKNOWN = "UPSTREAM_UNKNOWN";
  public static final String STORE_UNAVAILABLE = "STORE_UNAVAILABLE";
  public static final String SAGA_NOT_FOUND = "SAGA_NOT_FOUND";
  public static final String SAGA_STATE_CONFLICT = "SAGA_STATE_CONFLICT";
  public static final String LIMIT_EXCEEDED = "LIMIT_EXCEEDED";
  public static final String CLOCK_SKEW = "CLOCK_SKEW";
  public static final String SHUTTING_DOWN = "SHUTTING_DOWN";
  public static final String TOPIC_UNKNOWN = "TOPIC_UNKNOWN";
  public static final String PERMIT_UNKNOWN = "PERMIT_UNKNOWN";
  public static final String UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE";
  public static final String UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT";

  /** Store states that say more than {@value #STORE_UNAVAILABLE}: {@link StoreUnavailableException}. */
  public static final String STORE_FULL = "STORE_FULL";

  public static final String STORE_READ_ONLY = "STORE_READ_ONLY";
  public static final String REPLICATION_SHORTFALL = "REPLICATION_SHORTFALL";

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
   * Decodes an error from a call to the sidecar into the exception of its reason: {@link
   * LeaseLostException}, {@link InvalidArgumentException} (every INVALID_ARGUMENT), ... or a plain
   * {@code SidecarException}. A {@code SidecarException} is returned as it is; an exception that is
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

  static SidecarException create(Status status, Metadata trailers, Details d) {
    if (status.getCode() == Status.Code.INVALID_ARGUMENT) {
      return new InvalidArgumentException(status, trailers, d);
    }
    return switch (d.reason()) {
      case LEASE_LOST -> new LeaseLostException(status, trailers, d, "");
      case IDEMPOTENCY_KEY_MISMATCH -> new IdempotencyKeyMismatchException(status, trailers, d);
      case STORE_UNAVAILABLE, STORE_FULL, STORE_READ_ONLY, REPLICATION_SHORTFALL ->
          new StoreUnavailableException(status, trailers, d);
      case BREAKER_OPEN -> new BreakerOpenException(status, trailers, d);
      case UPSTREAM_UNKNOWN -> new UpstreamUnknownException(status, trailers, d);
      case SAGA_NOT_FOUND -> new SagaNotFoundException(status, trailers, d);
      case SAGA_STATE_CONFLICT -> new SagaStateConflictException(status, trailers, d);
      case LIMIT_EXCEEDED -> new LimitExceededException(status, trailers, d);
      case CLOCK_SKEW -> new ClockSkewException(status, trailers, d);
      case SHUTTING_DOWN -> new ShuttingDownException(status, trailers, d);
      case TOPIC_UNKNOWN -> new TopicUnknownException(status, trailers, d);
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
