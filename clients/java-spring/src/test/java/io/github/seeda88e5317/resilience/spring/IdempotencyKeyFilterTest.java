package io.github.seeda88e5317.resilience.spring;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.spring.testapp.TestApp;
import io.github.seeda88e5317.resilience.spring.testapp.TestController;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.boot.test.web.server.LocalServerPort;
import org.springframework.context.ConfigurableApplicationContext;
import org.springframework.core.env.Environment;
import org.springframework.test.context.DynamicPropertyRegistry;
import org.springframework.test.context.DynamicPropertySource;

/**
 * The Idempotency-Key filter in a real embedded Tomcat on a random port, against real sidecars on a
 * real Redis: every case of the middleware's contract (first run and replay, 409 while in
 * progress, 422 on another body, release on 5xx and on an exception, no header, 400 on an invalid
 * key, 413, replay through a second sidecar, 503 with the sidecar stopped, required, scopes).
 */
@SpringBootTest(
    classes = TestApp.class,
    webEnvironment = SpringBootTest.WebEnvironment.RANDOM_PORT,
    properties = {"spring.main.banner-mode=off", "logging.level.root=WARN"})
class IdempotencyKeyFilterTest {

  @DynamicPropertySource
  static void sidecar(DynamicPropertyRegistry registry) {
    registry.add("resilience.sidecar.address", () -> Processes.shared().a.address);
  }

  @LocalServerPort int port;
  @Autowired TestController controller;

  private final HttpClient http =
      HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();

  static String newKey() {
    return "k-" + UUID.randomUUID();
  }

  HttpResponse<String> post(int port, String path, String key, String body) throws Exception {
    return post(port, path, key, body, null);
  }

  HttpResponse<String> post(int port, String path, String key, String body, String tenant)
      throws Exception {
    HttpRequest.Builder b =
        HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + path))
            .timeout(Duration.ofSeconds(30))
            .header("Content-Type", "text/plain")
            .POST(HttpRequest.BodyPublishers.ofString(body));
    if (key != null) {
      b.header("Idempotency-Key", key);
    }
    if (tenant != null) {
      b.header("X-Tenant", tenant);
    }
    return http.send(b.build(), HttpResponse.BodyHandlers.ofString());
  }

  static void assertProblem(HttpResponse<String> r, int status, String code) {
    assertEquals(status, r.statusCode(), r.body());
    assertEquals(
        "application/problem+json", r.headers().firstValue("Content-Type").orElse(""), r.body());
    assertTrue(r.body().contains("\"code\":\"" + code + "\""), r.body());
    assertTrue(r.body().contains("\"status\":" + status), r.body());
    assertTrue(r.body().contains("\"type\":\"about:blank\""), r.body());
  }

  @Test
  void firstRequestRunsOnceAndDuplicatesReplayTheResponse() throws Exception {
    String key = newKey();
    int before = controller.orders.get();
    HttpResponse<String> first = post(port, "/orders?note=n1", key, "widget");
    assertEquals(201, first.statusCode(), first.body());
    assertFalse(first.headers().firstValue("Idempotent-Replayed").isPresent());
    assertEquals(before + 1, controller.orders.get());

    for (int i = 0; i < 2; i++) {
      HttpResponse<String> dup = post(port, "/orders?note=n1", key, "widget");
      assertEquals(201, dup.statusCode());
      assertEquals(first.body(), dup.body());
      assertEquals("true", dup.headers().firstValue("Idempotent-Replayed").orElse(""));
      assertEquals(
          first.headers().firstValue("X-Order").orElseThrow(),
          dup.headers().firstValue("X-Order").orElse(""));
      assertEquals(
          first.headers().firstValue("Content-Type").orElseThrow(),
          dup.headers().firstValue("Content-Type").orElse(""));
      assertFalse(dup.headers().firstValue("Set-Cookie").isPresent(), "Set-Cookie is not stored");
    }
    assertEquals(before + 1, controller.orders.get(), "the handler ran once");
  }

  @Test
  void anAsynchronousHandlersResponseIsStoredAndReplayed() throws Exception {
    String key = newKey();
    int before = controller.asyncRuns.get();
    HttpResponse<String> first = post(port, "/async", key, "later");
    assertEquals(202, first.statusCode(), first.body());
    assertEquals("async " + (before + 1) + " later", first.body());
    HttpResponse<String> dup = post(port, "/async", key, "later");
    assertEquals(202, dup.statusCode());
    assertEquals(first.body(), dup.body());
    assertEquals("yes", dup.headers().firstValue("X-Async").orElse(""));
    assertEquals("true", dup.headers().firstValue("Idempotent-Replayed").orElse(""));
    assertEquals(before + 1, controller.asyncRuns.get());
  }

  @Test
  void aDuplicateWhileTheFirstRunsGets409WithRetryAfter() throws Exception {
    String key = newKey();
    controller.slowStarted = new CountDownLatch(1);
    controller.slowRelease = new CountDownLatch(1);
    int before = controller.slowRuns.get();
    CompletableFuture<HttpResponse<String>> first =
        CompletableFuture.supplyAsync(
            () -> {
              try {
                return post(port, "/slow", key, "");
              } catch (Exception e) {
                throw new IllegalStateException(e);
              }
            });
    assertTrue(controller.slowStarted.await(20, TimeUnit.SECONDS), "the first request started");
    HttpResponse<String> dup = post(port, "/slow", key, "");
    assertProblem(dup, 409, "IDEMPOTENCY_KEY_IN_USE");
    int retryAfter = Integer.parseInt(dup.headers().firstValue("Retry-After").orElseThrow());
    assertTrue(retryAfter >= 1, "Retry-After " + retryAfter);
    controller.slowRelease.countDown();
    assertEquals(200, first.get(30, TimeUnit.SECONDS).statusCode());
    HttpResponse<String> after = post(port, "/slow", key, "");
    assertEquals(200, after.statusCode());
    assertEquals("done", after.body());
    assertEquals("true", after.headers().firstValue("Idempotent-Replayed").orElse(""));
    assertEquals(before + 1, controller.slowRuns.get());
  }

  @Test
  void theSameKeyWithAnotherBodyGets422() throws Exception {
    String key = newKey();
    assertEquals(201, post(port, "/orders", key, "one").statusCode());
    int runs = controller.orders.get();
    assertProblem(post(port, "/orders", key, "two"), 422, "IDEMPOTENCY_KEY_REUSED");
    assertProblem(post(port, "/orders?note=x", key, "one"), 422, "IDEMPOTENCY_KEY_REUSED");
    assertEquals(runs, controller.orders.get(), "the handler did not run");
  }

  @Test
  void a5xxIsNotStoredAndTheRetryRunsAgain() throws Exception {
    String key = newKey();
    controller.failRuns.set(0);
    HttpResponse<String> first = post(port, "/fail", key, "");
    assertEquals(500, first.statusCode());
    assertEquals("boom 1", first.body(), "the handler's own 5xx is sent");
    HttpResponse<String> retry = post(port, "/fail", key, "");
    assertEquals(201, retry.statusCode());
    assertEquals("ok 2", retry.body());
    HttpResponse<String> dup = post(port, "/fail", key, "");
    assertEquals("ok 2", dup.body());
    assertEquals("true", dup.headers().firstValue("Idempotent-Replayed").orElse(""));
    assertEquals(2, controller.failRuns.get());
  }

  @Test
  void aHandlerThatThrowsReleasesTheKey() throws Exception {
    String key = newKey();
    controller.throwRuns.set(0);
    HttpResponse<String> first = post(port, "/throw", key, "");
    assertEquals(500, first.statusCode());
    HttpResponse<String> retry = post(port, "/throw", key, "");
    assertEquals(200, retry.statusCode(), retry.body());
    assertEquals("ok 2", retry.body());
    assertEquals(2, controller.throwRuns.get());
  }

  @Test
  void requestsWithoutTheHeaderOrOfOtherMethodsPassThrough() throws Exception {
    int before = controller.orders.get();
    assertEquals(201, post(port, "/orders", null, "a").statusCode());
    assertEquals(201, post(port, "/orders", null, "a").statusCode());
    assertEquals(before + 2, controller.orders.get());

    String key = newKey();
    int reads = controller.reads.get();
    for (int i = 0; i < 2; i++) {
      HttpResponse<String> r =
          http.send(
              HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/orders"))
                  .header("Idempotency-Key", key)
                  .GET()
                  .build(),
              HttpResponse.BodyHandlers.ofString());
      assertEquals(200, r.statusCode());
      assertFalse(r.headers().firstValue("Idempotent-Replayed").isPresent());
    }
    assertEquals(reads + 2, controller.reads.get(), "GET is not covered");
  }

  @Test
  void anInvalidKeyGets400NamingTheHeader() throws Exception {
    int before = controller.orders.get();
    HttpResponse<String> tooLong = post(port, "/orders", "k".repeat(256), "a");
    assertProblem(tooLong, 400, "IDEMPOTENCY_KEY_INVALID");
    assertTrue(tooLong.body().contains("Idempotency-Key"), tooLong.body());
    assertProblem(post(port, "/orders", "", "a"), 400, "IDEMPOTENCY_KEY_INVALID");
    assertEquals(before, controller.orders.get());
    // 255 characters is the longest accepted.
    assertEquals(201, post(port, "/orders", "x".repeat(245) + newKey().substring(0, 10), "a").statusCode());
  }

  @Test
  void aBodyOverTheLimitGets413() throws Exception {
    int before = controller.orders.get();
    HttpResponse<String> r = post(port, "/orders", newKey(), "x".repeat(1024 * 1024 + 1));
    assertProblem(r, 413, "IDEMPOTENCY_BODY_TOO_LARGE");
    assertEquals(before, controller.orders.get());
  }

  @Test
  void aFormBodyStillReachesTheHandlersParameters() throws Exception {
    String key = newKey();
    HttpRequest req =
        HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/form?item=apple"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Idempotency-Key", key)
            .POST(HttpRequest.BodyPublishers.ofString("qty=3"))
            .build();
    HttpResponse<String> r = http.send(req, HttpResponse.BodyHandlers.ofString());
    assertEquals(200, r.statusCode(), r.body());
    assertEquals("applex3", r.body());
    HttpResponse<String> dup = http.send(req, HttpResponse.BodyHandlers.ofString());
    assertEquals("applex3", dup.body());
    assertEquals("true", dup.headers().firstValue("Idempotent-Replayed").orElse(""));
  }

  @Test
  void aDuplicateThroughASecondSidecarOnTheSameRedisIsReplayed() throws Exception {
    try (ConfigurableApplicationContext other =
        app("resilience.sidecar.address=" + Processes.shared().b.address)) {
      int otherPort = port(other);
      TestController otherController = other.getBean(TestController.class);
      String key = newKey();
      HttpResponse<String> first = post(port, "/orders", key, "via-a");
      assertEquals(201, first.statusCode());
      HttpResponse<String> dup = post(otherPort, "/orders", key, "via-a");
      assertEquals(201, dup.statusCode());
      assertEquals(first.body(), dup.body());
      assertEquals("true", dup.headers().firstValue("Idempotent-Replayed").orElse(""));
      assertEquals(0, otherController.orders.get(), "the second instance's handler did not run");
    }
  }

  @Test
  void theSidecarStoppedGives503AndTheHandlerDoesNotRun() throws Exception {
    Processes.Sidecar c = Processes.shared().startSidecar("c");
    try (ConfigurableApplicationContext app =
        app(
            "resilience.sidecar.address=" + c.address,
            "resilience.sidecar.connect-wait=200ms",
            "resilience.sidecar.call-timeout=2s",
            "resilience.sidecar.idempotency.required=true",
            "test.tenant-scope=true")) {
      int p = port(app);
      TestController ctl = app.getBean(TestController.class);

      // required: a covered request without the header is refused.
      assertProblem(post(p, "/orders", null, "a", "t1"), 400, "IDEMPOTENCY_KEY_MISSING");
      assertEquals(0, ctl.orders.get());

      // The scope resolver: one key, two tenants, two runs; the same tenant again is replayed.
      String key = newKey();
      assertEquals(201, post(p, "/orders", key, "a", "t1").statusCode());
      assertEquals(201, post(p, "/orders", key, "b", "t2").statusCode());
      assertEquals(2, ctl.orders.get());
      HttpResponse<String> again = post(p, "/orders", key, "a", "t1");
      assertEquals("true", again.headers().firstValue("Idempotent-Replayed").orElse(""));
      assertEquals(2, ctl.orders.get());

      c.close();
      assertFalse(c.process.isAlive());
      HttpResponse<String> r = post(p, "/orders", newKey(), "a", "t1");
      assertProblem(r, 503, "SIDECAR_UNAVAILABLE");
      assertEquals("1", r.headers().firstValue("Retry-After").orElse(""));
      assertEquals(2, ctl.orders.get(), "the handler did not run");
    } finally {
      c.close();
    }
  }

  /** Another instance of the test application, on its own random port. */
  static ConfigurableApplicationContext app(String... properties) {
    String[] props = new String[properties.length + 3];
    props[0] = "server.port=0";
    props[1] = "spring.main.banner-mode=off";
    props[2] = "logging.level.root=WARN";
    System.arraycopy(properties, 0, props, 3, properties.length);
    return new SpringApplicationBuilder(TestApp.class).properties(props).run();
  }

  static int port(ConfigurableApplicationContext ctx) {
    Environment env = ctx.getEnvironment();
    int p = env.getProperty("local.server.port", Integer.class, 0);
    assertNotEquals(0, p);
    return p;
  }

}
