package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.GetLockRequest;
import io.github.seeda88e5317.resilience.v1.NextUlidRequest;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.logging.Level;
import java.util.logging.Logger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

@ExtendWith(SidecarExtension.class)
@Timeout(60)
class ClientConfigTest {
  // grpc-java's Netty sets SO_KEEPALIVE on unix domain sockets too, and Netty logs a warning for
  // each such connection; it is harmless. Kept in a field: java.util.logging holds loggers weakly.
  static final Logger NETTY_BOOTSTRAP = Logger.getLogger("io.grpc.netty.shaded.io.netty.bootstrap");

  static {
    NETTY_BOOTSTRAP.setLevel(Level.SEVERE);
  }

  static final GetLockRequest GET = GetLockRequest.newBuilder().setKey("java/config").build();

  @Test
  void addressAndTokenFileComeFromTheEnvironment(SidecarExtension.Env env) {
    try (ResilienceClient client =
        ResilienceClient.builder().environment(env.childEnvironment()).build()) {
      assertEquals(env.address(), client.address());
      assertFalse(client.locks().getLock(GET).getHeld());
      assertEquals(
          26,
          client
              .clocks()
              .nextUlid(NextUlidRequest.getDefaultInstance())
              .getUlids(0)
              .getValue()
              .length());
    }
  }

  @Test
  void theTokenVariableBeatsTheTokenFile(SidecarExtension.Env env) {
    Map<String, String> vars =
        Map.of(
            ResilienceClient.ENV_ADDR,
            env.address(),
            ResilienceClient.ENV_TOKEN,
            env.token(),
            ResilienceClient.ENV_TOKEN_FILE,
            "/nonexistent/token");
    try (ResilienceClient client = ResilienceClient.builder().environment(vars).build()) {
      assertFalse(client.locks().getLock(GET).getHeld());
    }
    Map<String, String> wrong =
        Map.of(ResilienceClient.ENV_ADDR, env.address(), ResilienceClient.ENV_TOKEN, "wrong");
    try (ResilienceClient client = ResilienceClient.builder().environment(wrong).build()) {
      StatusRuntimeException e =
          assertThrows(StatusRuntimeException.class, () -> client.locks().getLock(GET));
      assertEquals(Status.Code.UNAUTHENTICATED, e.getStatus().getCode());
    }
  }

  @Test
  void anUnreadableTokenFileFailsTheBuild() {
    UncheckedIOException e =
        assertThrows(
            UncheckedIOException.class,
            () ->
                ResilienceClient.builder()
                    .environment(Map.of(ResilienceClient.ENV_TOKEN_FILE, "/nonexistent/token"))
                    .build());
    assertTrue(e.getMessage().contains("SIDECAR_API_TOKEN_FILE"), e.getMessage());
  }

  @Test
  void defaultsToTheSidecarsDefaultAddress() {
    try (ResilienceClient client = ResilienceClient.builder().environment(Map.of()).build()) {
      assertEquals(ResilienceClient.DEFAULT_ADDR, client.address());
      assertEquals(ResilienceClient.DEFAULT_CALL_TIMEOUT, client.callTimeout());
    }
  }

  @Test
  void aUnixSocketAddressWorks() throws Exception {
    Path dir = Files.createTempDirectory("rs-java-");
    String address = "unix://" + dir.resolve("sidecar.sock");
    TestProcesses.Sidecar sidecar =
        TestProcesses.Sidecar.start(TestProcesses.workDir("unix"), null, null, address);
    try (ResilienceClient client =
        ResilienceClient.builder()
            .environment(Map.of(ResilienceClient.ENV_ADDR, address))
            .build()) {
      try (LockSession s = client.holdLock("java/unix")) {
        assertTrue(
            client
                .locks()
                .getLock(GetLockRequest.newBuilder().setKey("java/unix").build())
                .getHeld());
        assertTrue(s.lease().fencingToken() > 0);
      }
    } finally {
      sidecar.close();
      Files.deleteIfExists(dir.resolve("sidecar.sock"));
      Files.deleteIfExists(dir);
    }
  }
}
