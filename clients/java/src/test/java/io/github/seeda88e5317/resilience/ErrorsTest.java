package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.protobuf.Duration;
import com.google.protobuf.Timestamp;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.github.seeda88e5317.resilience.v1.AcquireLockRequest;
import io.github.seeda88e5317.resilience.v1.AllowCallRequest;
import io.github.seeda88e5317.resilience.v1.CallOutcome;
import io.github.seeda88e5317.resilience.v1.GetLockRequest;
import io.github.seeda88e5317.resilience.v1.GetSagaRequest;
import io.github.seeda88e5317.resilience.v1.HlcTimestamp;
import io.github.seeda88e5317.resilience.v1.ReleaseLockRequest;
import io.github.seeda88e5317.resilience.v1.ReportCallRequest;
import io.github.seeda88e5317.resilience.v1.UpdateHlcRequest;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.time.Instant;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

@ExtendWith(SidecarExtension.class)
@Timeout(60)
class ErrorsTest {
  ResilienceClient client;

  @BeforeEach
  void connect(SidecarExtension.Env env) {
    client = env.client();
  }

  @AfterEach
  void close() {
    client.close();
  }

  @Test
  void releaseOfAnUnknownLeaseIsLeaseLost() {
    StatusRuntimeException raw =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                client
                    .locks()
                    .releaseLock(
                        ReleaseLockRequest.newBuilder()
                            .setKey("java/errors/none")
                            .setLeaseId("0123456789abcdef0123456789abcdef")
                            .build()));
    SidecarException e = SidecarException.from(raw);
    LeaseLostException lost = assertInstanceOf(LeaseLostException.class, e);
    assertEquals(Status.Code.FAILED_PRECONDITION, lost.code());
    assertEquals(SidecarException.LEASE_LOST, lost.reason());
    assertEquals("", lost.lossReason());
    assertEquals(raw.getStatus().getCode(), lost.getStatus().getCode());
    assertTrue(
        lost.getMessage().startsWith("resilience: FAILED_PRECONDITION LEASE_LOST: "),
        lost.getMessage());
    assertEquals(e, SidecarException.from(e), "decoding twice changes nothing");
  }

  @Test
  void anEmptyKeyIsInvalidArgumentNamingTheField() {
    StatusRuntimeException raw =
        assertThrows(
            StatusRuntimeException.class,
            () -> client.locks().acquireLock(AcquireLockRequest.newBuilder().setKey("").build()));
    InvalidArgumentException e =
        assertInstanceOf(InvalidArgumentException.class, SidecarException.from(raw));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    assertTrue(e.violations().containsKey("key"), "violations: " + e.violations());
    assertTrue(!e.violations().get("key").isEmpty());
  }

  @Test
  void everyBadFieldIsNamed() {
    StatusRuntimeException raw =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                client
                    .locks()
                    .acquireLock(
                        AcquireLockRequest.newBuilder()
                            .setKey("")
                            .setTtl(Duration.newBuilder().setNanos(1_000_000))
                            .build()));
    Map<String, String> v = SidecarException.from(raw).violations();
    assertTrue(v.containsKey("key") && v.containsKey("ttl"), "violations: " + v);
  }

  @Test
  void helpersThrowTypedExceptions() {
    // HoldLock names the field inside its acquire message.
    InvalidArgumentException e =
        assertThrows(InvalidArgumentException.class, () -> client.holdLock(""));
    assertTrue(e.violations().containsKey("acquire.key"), "violations: " + e.violations());
    InvalidArgumentException w =
        assertThrows(
            InvalidArgumentException.class,
            () -> client.withLock("", (lease, cancelled) -> "never runs"));
    assertTrue(w.violations().containsKey("acquire.key"), "violations: " + w.violations());
    InvalidArgumentException i =
        assertThrows(
            InvalidArgumentException.class,
            () -> client.idempotent("", "fp", () -> IdempotentResult.ofString("never runs")));
    assertTrue(i.violations().containsKey("key"), "violations: " + i.violations());
  }

  @Test
  void aMissingTokenIsUnauthenticated(SidecarExtension.Env env) {
    try (ResilienceClient anonymous =
        ResilienceClient.builder().environment(Map.of()).address(env.address()).build()) {
      StatusRuntimeException raw =
          assertThrows(
              StatusRuntimeException.class,
              () -> anonymous.locks().getLock(GetLockRequest.newBuilder().setKey("k").build()));
      SidecarException e = SidecarException.from(raw);
      assertEquals(Status.Code.UNAUTHENTICATED, e.code());
      SidecarException h = assertThrows(SidecarException.class, () -> anonymous.holdLock("k"));
      assertEquals(Status.Code.UNAUTHENTICATED, h.code());
    }
  }

  /** An error as the sidecar sends it: code, message, ErrorInfo and RetryInfo in the details. */
  static StatusRuntimeException sidecarError(Status.Code code, String reason) {
    com.google.rpc.Status proto =
        com.google.rpc.Status.newBuilder()
            .setCode(code.value())
            .setMessage("test error " + reason)
            .addDetails(
                Any.pack(
                    ErrorInfo.newBuilder()
                        .setDomain(SidecarException.ERROR_DOMAIN)
                        .setReason(reason)
                        .putMetadata("breaker", "b1")
                        .build()))
            .addDetails(
                Any.pack(
                    RetryInfo.newBuilder()
                        .setRetryDelay(Duration.newBuilder().setNanos(250_000_000))
                        .build()))
            .build();
    return StatusProto.toStatusRuntimeException(proto);
  }

  /** LEASE_LOST -> LeaseLostException, the naming rule of every reason's exception. */
  static String exceptionName(String reason) {
    StringBuilder b = new StringBuilder();
    for (String part : reason.split("_")) {
      b.append(part.charAt(0)).append(part.substring(1).toLowerCase(Locale.ROOT));
    }
    return b.append("Exception").toString();
  }

  @Test
  @Tag("scenario:errors-every-reason")
  void everyReasonOfTheGeneratedListHasItsOwnTypedException() {
    assertFalse(Reasons.ALL.isEmpty());
    Set<Class<?>> classes = new HashSet<>();
    for (String reason : Reasons.ALL) {
      // Whatever the code: the reason decides (UPSTREAM_UNKNOWN comes as INVALID_ARGUMENT,
      // UPSTREAM_TIMEOUT as DEADLINE_EXCEEDED, BREAKER_OPEN as UNAVAILABLE).
      for (Status.Code code :
          List.of(
              Status.Code.UNAVAILABLE,
              Status.Code.INVALID_ARGUMENT,
              Status.Code.DEADLINE_EXCEEDED,
              Status.Code.FAILED_PRECONDITION,
              Status.Code.NOT_FOUND)) {
        SidecarException e = SidecarException.from(sidecarError(code, reason));
        String what = reason + " with " + code;
        assertEquals(exceptionName(reason), e.getClass().getSimpleName(), what);
        assertEquals(reason, e.reason(), what);
        assertEquals(code, e.code(), what);
        assertEquals(Map.of("breaker", "b1"), e.metadata(), what);
        assertEquals(java.time.Duration.ofMillis(250), e.retryDelay(), what);
        assertTrue(e.getMessage().contains("test error " + reason), e.getMessage());
        classes.add(e.getClass());
      }
    }
    assertEquals(Reasons.ALL.size(), classes.size(), "two reasons share an exception class");
    // Families stay catchable as before.
    assertInstanceOf(
        InvalidArgumentException.class,
        SidecarException.from(sidecarError(Status.Code.INVALID_ARGUMENT, Reasons.UPSTREAM_UNKNOWN)));
    for (String store :
        List.of(Reasons.STORE_FULL, Reasons.STORE_READ_ONLY, Reasons.REPLICATION_SHORTFALL)) {
      assertInstanceOf(
          StoreUnavailableException.class,
          SidecarException.from(sidecarError(Status.Code.UNAVAILABLE, store)));
    }
    // Without a reason: plain UNAVAILABLE is the sidecar unreachable, DEADLINE_EXCEEDED a deadline.
    assertInstanceOf(
        SidecarUnreachableException.class,
        SidecarException.from(Status.UNAVAILABLE.withDescription("x").asRuntimeException()));
    assertInstanceOf(
        DeadlineExceededException.class,
        SidecarException.from(Status.DEADLINE_EXCEEDED.asRuntimeException()));
    assertEquals(
        SidecarException.class,
        SidecarException.from(sidecarError(Status.Code.UNAVAILABLE, "SOME_FUTURE_REASON")).getClass());
  }

  @Test
  void theSidecarsErrorsDecodeToTheirTypes() {
    // UPSTREAM_UNKNOWN: the sidecar of this test declares no upstream (SidecarException.from
    // used to stop at INVALID_ARGUMENT).
    UpstreamUnknownException upstream =
        assertThrows(
            UpstreamUnknownException.class,
            () -> client.executeCall("none", UpstreamRequest.get("/")));
    assertEquals(Reasons.UPSTREAM_UNKNOWN, upstream.reason());
    assertThrows(
        SagaNotFoundException.class,
        () ->
            decode(
                () ->
                    client
                        .sagas()
                        .getSaga(GetSagaRequest.newBuilder().setSagaId("java-none").build())));
    // A permit reported twice: the second report is PERMIT_UNKNOWN.
    String permit =
        client
            .breakers()
            .allowCall(AllowCallRequest.newBuilder().setBreaker("java-errors").build())
            .getPermitId();
    ReportCallRequest report =
        ReportCallRequest.newBuilder()
            .setPermitId(permit)
            .setOutcome(CallOutcome.CALL_OUTCOME_SUCCESS)
            .build();
    client.breakers().reportCall(report);
    assertThrows(
        PermitUnknownException.class, () -> decode(() -> client.breakers().reportCall(report)));
    assertThrows(
        ClockSkewException.class,
        () ->
            decode(
                () ->
                    client
                        .clocks()
                        .updateHlc(
                            UpdateHlcRequest.newBuilder()
                                .setTimestamp(
                                    HlcTimestamp.newBuilder()
                                        .setWallTime(
                                            Timestamp.newBuilder()
                                                .setSeconds(
                                                    Instant.now().getEpochSecond() + 3600))
                                        .build())
                                .build())));
  }

  @Test
  void aServerThatNeverAnswersIsADeadlineError() throws Exception {
    try (ServerSocket silent = new ServerSocket(0, 10, InetAddress.getLoopbackAddress());
        ResilienceClient c =
            ResilienceClient.builder()
                .environment(Map.of())
                .address("127.0.0.1:" + silent.getLocalPort())
                .callTimeout(java.time.Duration.ofMillis(300))
                .build()) {
      DeadlineExceededException e =
          assertThrows(
              DeadlineExceededException.class,
              () -> decode(() -> c.locks().getLock(GetLockRequest.newBuilder().setKey("k").build())));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code());
      assertEquals("", e.reason());
    }
  }

  static <T> T decode(java.util.function.Supplier<T> call) {
    try {
      return call.get();
    } catch (StatusRuntimeException e) {
      throw SidecarException.from(e);
    }
  }

  @Test
  void aNonGrpcExceptionIsWrappedAsUnknown() {
    IllegalStateException cause = new IllegalStateException("x");
    SidecarException e = SidecarException.from(cause);
    assertEquals(Status.Code.UNKNOWN, e.code());
    assertEquals(cause, e.getCause());
  }
}
