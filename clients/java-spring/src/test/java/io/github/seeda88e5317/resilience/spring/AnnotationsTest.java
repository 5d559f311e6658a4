package io.github.seeda88e5317.resilience.spring;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.IdempotencyKeyMismatchException;
import io.github.seeda88e5317.resilience.Lease;
import io.github.seeda88e5317.resilience.LockHandle;
import io.github.seeda88e5317.resilience.NotAcquiredException;
import io.github.seeda88e5317.resilience.ResilienceClient;
import io.github.seeda88e5317.resilience.SidecarException;
import io.github.seeda88e5317.resilience.spring.testapp.TestApp;
import io.github.seeda88e5317.resilience.spring.testapp.TestService;
import io.github.seeda88e5317.resilience.spring.testapp.TestService.ChargeRequest;
import io.github.seeda88e5317.resilience.spring.testapp.TestService.Receipt;
import io.github.seeda88e5317.resilience.v1.GetLockRequest;
import io.github.seeda88e5317.resilience.v1.GetLockResponse;
import io.grpc.Status;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.context.ConfigurableApplicationContext;
import org.springframework.test.context.DynamicPropertyRegistry;
import org.springframework.test.context.DynamicPropertySource;

/**
 * {@code @WithLock} and {@code @Idempotent} on a real Spring bean, against real sidecars on a real
 * Redis. Same configuration as {@link IdempotencyKeyFilterTest}, so the two share one context.
 */
@SpringBootTest(
    classes = TestApp.class,
    webEnvironment = SpringBootTest.WebEnvironment.RANDOM_PORT,
    properties = {"spring.main.banner-mode=off", "logging.level.root=WARN"})
class AnnotationsTest {

  @DynamicPropertySource
  static void sidecar(DynamicPropertyRegistry registry) {
    registry.add("resilience.sidecar.address", () -> Processes.shared().a.address);
  }

  @Autowired TestService service;
  @Autowired ResilienceClient client;

  @Test
  void theAutoConfiguredClientUsesTheConfiguredAddress() {
    assertEquals(Processes.shared().a.address, client.address());
  }

  @Test
  void theConfiguredTokenOrTokenFileIsSent() throws Exception {
    Processes procs = Processes.shared();
    Path secret = procs.dir.resolve("token-" + UUID.randomUUID());
    Files.writeString(secret, "s3cret-" + UUID.randomUUID() + "\n");
    Path wrong = procs.dir.resolve("wrong-" + UUID.randomUUID());
    Files.writeString(wrong, "not-the-token\n");
    Processes.Sidecar d = procs.startSidecar("d", secret);
    try {
      String token = Files.readString(secret).strip();
      try (ConfigurableApplicationContext ok =
              IdempotencyKeyFilterTest.app(
                  "resilience.sidecar.address=" + d.address, "resilience.sidecar.token=" + token);
          ConfigurableApplicationContext okFile =
              IdempotencyKeyFilterTest.app(
                  "resilience.sidecar.address=" + d.address,
                  "resilience.sidecar.token-file=" + secret);
          ConfigurableApplicationContext bad =
              IdempotencyKeyFilterTest.app(
                  "resilience.sidecar.address=" + d.address,
                  "resilience.sidecar.token-file=" + wrong)) {
        String name = UUID.randomUUID().toString();
        assertTrue(ok.getBean(TestService.class).quick(name).fencingToken() > 0);
        assertTrue(okFile.getBean(TestService.class).quick(name).fencingToken() > 0);
        SidecarException e =
            assertThrows(SidecarException.class, () -> bad.getBean(TestService.class).quick(name));
        assertEquals(Status.Code.UNAUTHENTICATED, e.getStatus().getCode(), e.getMessage());
      }
    } finally {
      d.close();
    }
  }

  @Test
  void withLockHoldsTheLockWhileTheMethodRuns() throws Exception {
    String name = UUID.randomUUID().toString();
    String key = "res/" + name;
    service.armLocked();
    CompletableFuture<Lease> running =
        CompletableFuture.supplyAsync(
            () -> {
              try {
                return service.locked(name);
              } catch (InterruptedException e) {
                throw new IllegalStateException(e);
              }
            });
    assertTrue(service.awaitLockedStarted(), "the method started");

    // While it runs the sidecar shows the lock held, and nobody else gets it.
    GetLockResponse held = client.locks().getLock(GetLockRequest.newBuilder().setKey(key).build());
    assertTrue(held.getHeld(), held.toString());
    try (LockHandle other = client.lock(key)) {
      assertFalse(other.tryAcquire(), "the lock is held while the method runs");
    }
    assertThrows(NotAcquiredException.class, () -> service.locked(name));

    service.releaseLocked();
    Lease lease = running.get(30, TimeUnit.SECONDS);
    assertEquals(key, lease.key());
    assertEquals(held.getHolder().getFencingToken(), lease.fencingToken());

    // Released when the method returned.
    try (LockHandle other = client.lock(key)) {
      assertTrue(other.tryAcquire(), "released after the method");
      other.release();
    }
    assertFalse(CurrentLock.lease().isPresent(), "no lease outside the method");
  }

  @Test
  void withLockGivesEachCallANewHigherFencingToken() {
    String name = UUID.randomUUID().toString();
    Lease first = service.quick(name);
    Lease second = service.quick(name);
    assertTrue(second.fencingToken() > first.fencingToken());
  }

  @Test
  void aKeyExpressionThatIsNullIsRefused() {
    IllegalArgumentException e =
        assertThrows(IllegalArgumentException.class, () -> service.nullKey(null));
    assertTrue(e.getMessage().contains("@WithLock(key) of TestService.nullKey"), e.getMessage());
    assertTrue(e.getMessage().contains("null"), e.getMessage());
  }

  @Test
  void idempotentReturnsTheStoredResultToADuplicate() {
    String order = "o-" + UUID.randomUUID();
    int before = service.charges();
    Receipt first = service.charge(new ChargeRequest(order, 500));
    Receipt dup = service.charge(new ChargeRequest(order, 500));
    assertEquals(first, dup);
    assertEquals(before + 1, service.charges(), "the method ran once");
    assertEquals(before + 1, first.run());

    Receipt other = service.charge(new ChargeRequest("o-" + UUID.randomUUID(), 500));
    assertEquals(before + 2, other.run(), "another key runs");

    assertThrows(
        IdempotencyKeyMismatchException.class,
        () -> service.charge(new ChargeRequest(order, 700)),
        "the same key with another fingerprint");
    assertEquals(before + 2, service.charges());
  }

  @Test
  void idempotentReleasesTheKeyWhenTheMethodThrows() {
    String id = UUID.randomUUID().toString();
    service.resetFailing();
    assertThrows(IllegalArgumentException.class, () -> service.failOnce(id));
    assertEquals(2, service.failOnce(id), "the retry ran the method again");
    assertEquals(2, service.failOnce(id), "and its result is stored");
    assertEquals(2, service.failing());
  }

  @Test
  void idempotentReturnsTheStoredResultThroughASecondSidecar() {
    String order = "o-" + UUID.randomUUID();
    Receipt first = service.charge(new ChargeRequest(order, 900));
    try (ConfigurableApplicationContext other =
        IdempotencyKeyFilterTest.app("resilience.sidecar.address=" + Processes.shared().b.address)) {
      TestService otherService = other.getBean(TestService.class);
      assertEquals(first, otherService.charge(new ChargeRequest(order, 900)));
      assertEquals(0, otherService.charges(), "the other instance did not run it");
    }
  }
}
