package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Duration;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.util.Map;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;
import resilience.v1.Lock.AcquireLockRequest;
import resilience.v1.Lock.GetLockRequest;
import resilience.v1.Lock.ReleaseLockRequest;

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

  @Test
  void aNonGrpcExceptionIsWrappedAsUnknown() {
    IllegalStateException cause = new IllegalStateException("x");
    SidecarException e = SidecarException.from(cause);
    assertEquals(Status.Code.UNKNOWN, e.code());
    assertEquals(cause, e.getCause());
  }
}
