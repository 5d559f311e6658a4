package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.GetLockRequest;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A sidecar that is gone or frozen must give a clear error within the deadline, never a hang. These
 * tests run their own sidecars (on the embedded store), since they kill or freeze them.
 */
@Timeout(60)
class StoppedSidecarTest {
  static final Duration CALL_TIMEOUT = Duration.ofSeconds(1);
  static final GetLockRequest GET = GetLockRequest.newBuilder().setKey("java/stopped").build();

  static ResilienceClient clientOf(String address) {
    return ResilienceClient.builder()
        .environment(Map.of())
        .address(address)
        .callTimeout(CALL_TIMEOUT)
        .build();
  }

  static long millisSince(long t0) {
    return TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
  }

  @Test
  void aKilledSidecarIsUnavailableAtOnce() {
    Path dir = TestProcesses.workDir("killed");
    TestProcesses.Sidecar sidecar = TestProcesses.Sidecar.start(dir, null, null, null);
    try (ResilienceClient client = clientOf(sidecar.address)) {
      client.locks().getLock(GET); // connected
      sidecar.process.destroyForcibly();
      assertTrue(sidecar.process.onExit().orTimeout(10, TimeUnit.SECONDS).join() != null);

      long t0 = System.nanoTime();
      SidecarException e =
          SidecarException.from(
              assertThrows(StatusRuntimeException.class, () -> client.locks().getLock(GET)));
      assertInstanceOf(SidecarUnreachableException.class, e, e.getMessage());
      assertTrue(
          millisSince(t0) < CALL_TIMEOUT.toMillis() + 2000, "took " + millisSince(t0) + "ms");

      SidecarUnreachableException h =
          assertThrows(SidecarUnreachableException.class, () -> client.holdLock("java/stopped"));
      assertEquals(Status.Code.UNAVAILABLE, h.code(), h.getMessage());
      SidecarException i =
          assertThrows(
              SidecarException.class,
              () ->
                  client.idempotent(
                      "java/stopped",
                      "fp",
                      IdempotentOptions.defaults().unavailableRetries(1),
                      () -> IdempotentResult.ofString("never runs")));
      assertEquals(Status.Code.UNAVAILABLE, i.code(), i.getMessage());
    } finally {
      sidecar.close();
    }
  }

  @Test
  void noSidecarAtAllIsUnreachableAfterTheConnectWait() {
    String address = "127.0.0.1:" + TestProcesses.freePort(); // nothing listens there
    try (ResilienceClient client =
        ResilienceClient.builder()
            .environment(Map.of(ResilienceClient.ENV_ADDR, address))
            .build()) {
      long t0 = System.nanoTime();
      SidecarException e =
          SidecarException.from(
              assertThrows(StatusRuntimeException.class, () -> client.locks().getLock(GET)));
      assertInstanceOf(SidecarUnreachableException.class, e, e.getMessage());
      assertTrue(e.getMessage().contains("Connection refused"), e.getMessage());
      // The connect wait (2 s), then the failure, well before the 10 s call timeout.
      assertTrue(millisSince(t0) < 5000, "took " + millisSince(t0) + "ms");
    }
    // Without a connect wait it fails at once.
    try (ResilienceClient client =
        ResilienceClient.builder()
            .environment(Map.of())
            .address(address)
            .connectWait(Duration.ZERO)
            .build()) {
      long t0 = System.nanoTime();
      SidecarException e =
          SidecarException.from(
              assertThrows(StatusRuntimeException.class, () -> client.locks().getLock(GET)));
      assertInstanceOf(SidecarUnreachableException.class, e, e.getMessage());
      assertTrue(millisSince(t0) < 1000, "took " + millisSince(t0) + "ms");
    }
  }

  @Test
  void aFrozenSidecarIsADeadlineErrorAndItsSessionsAreLost() throws Exception {
    Path dir = TestProcesses.workDir("frozen");
    TestProcesses.Sidecar sidecar = TestProcesses.Sidecar.start(dir, null, null, null);
    try (ResilienceClient client = clientOf(sidecar.address)) {
      client.locks().getLock(GET); // connected
      LockSession session =
          client.holdLock("java/frozen", LockOptions.defaults().ttl(Duration.ofMillis(600)));
      LockSession longLease = client.holdLock("java/frozen-long"); // TTL 10 s
      sidecar.freeze(); // SIGSTOP: the socket stays open, nothing answers

      // Closing a session waits for the release at most the call timeout.
      long c0 = System.nanoTime();
      ReleaseUnconfirmedException unconfirmed =
          assertThrows(ReleaseUnconfirmedException.class, longLease::close);
      assertEquals(Status.Code.DEADLINE_EXCEEDED, unconfirmed.code(), unconfirmed.getMessage());
      assertTrue(
          millisSince(c0) < CALL_TIMEOUT.toMillis() + 2000, "took " + millisSince(c0) + "ms");

      // A unary call gets the default deadline, not a hang.
      long t0 = System.nanoTime();
      SidecarException e =
          SidecarException.from(
              assertThrows(StatusRuntimeException.class, () -> client.locks().getLock(GET)));
      long took = millisSince(t0);
      assertInstanceOf(DeadlineExceededException.class, e, e.getMessage());
      assertTrue(
          took >= CALL_TIMEOUT.toMillis() - 50 && took < CALL_TIMEOUT.toMillis() + 2000,
          "took " + took + "ms");

      // The session hears no renewal by its local deadline: the lease is about to expire.
      LeaseLostException lost = session.lost().get(10, TimeUnit.SECONDS);
      assertEquals(LockSession.RENEWAL_OVERDUE, lost.lossReason());
      LeaseLostException closed = assertThrows(LeaseLostException.class, session::close);
      assertEquals(LockSession.RENEWAL_OVERDUE, closed.lossReason());

      // Opening a session is bounded too.
      t0 = System.nanoTime();
      DeadlineExceededException h =
          assertThrows(DeadlineExceededException.class, () -> client.holdLock("java/frozen-2"));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, h.code(), h.getMessage());
      assertTrue(
          millisSince(t0) < CALL_TIMEOUT.toMillis() + 2000, "took " + millisSince(t0) + "ms");
    } finally {
      sidecar.close();
    }
  }
}
