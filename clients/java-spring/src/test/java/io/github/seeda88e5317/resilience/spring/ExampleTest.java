package io.github.seeda88e5317.resilience.spring;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * Runs the Spring Boot example (examples/java/spring-boot/run.sh --no-build, a JVM of its own)
 * against the real sidecar and checks what its README promises over HTTP.
 */
class ExampleTest {

  private final HttpClient http =
      HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

  @Test
  void theExampleChargesOnceShipsOnceAndReservesUnderTheLock() throws Exception {
    Processes procs = Processes.shared();
    Path root = Path.of(System.getProperty("resilience.repo.root", "../..")).toAbsolutePath();
    Path script = root.resolve("examples/java/spring-boot/run.sh");
    int port = Processes.freePort();
    Path log = procs.dir.resolve("example-spring-boot.log");
    ProcessBuilder pb =
        new ProcessBuilder(script.toString(), "--no-build", "--server.port=" + port)
            .redirectErrorStream(true)
            .redirectOutput(log.toFile());
    pb.environment().put("SIDECAR_ADDR", procs.a.address);
    Process app = pb.start();
    try {
      awaitUp(app, port, log);
      String base = "http://127.0.0.1:" + port;
      String order = "o-" + UUID.randomUUID();

      // 1. A payment retried with one Idempotency-Key is charged once.
      String key = "pay-" + UUID.randomUUID();
      HttpRequest pay =
          HttpRequest.newBuilder(URI.create(base + "/payments"))
              .header("Content-Type", "application/json")
              .header("Idempotency-Key", key)
              .POST(
                  HttpRequest.BodyPublishers.ofString(
                      "{\"orderId\":\"" + order + "\",\"cents\":1299}"))
              .build();
      HttpResponse<String> first = http.send(pay, HttpResponse.BodyHandlers.ofString());
      assertEquals(201, first.statusCode(), first.body());
      assertFalse(first.headers().firstValue("Idempotent-Replayed").isPresent());
      for (int i = 0; i < 2; i++) {
        HttpResponse<String> retry = http.send(pay, HttpResponse.BodyHandlers.ofString());
        assertEquals(201, retry.statusCode());
        assertEquals(first.body(), retry.body());
        assertEquals("true", retry.headers().firstValue("Idempotent-Replayed").orElse(""));
      }

      // 2. Shipping is @Idempotent by order id: the same shipment every time.
      String ship1 = post(base + "/orders/" + order + "/shipment").body();
      String ship2 = post(base + "/orders/" + order + "/shipment").body();
      assertTrue(ship1.contains("\"shipmentId\":\"ship_1\""), ship1);
      assertEquals(ship1, ship2);

      // 3. Two concurrent reservations are serialized by @WithLock, with increasing tokens.
      String sku = "sku-" + UUID.randomUUID();
      CompletableFuture<HttpResponse<String>> r1 =
          CompletableFuture.supplyAsync(() -> postUnchecked(base + "/stock/" + sku + "/reservations?units=2"));
      CompletableFuture<HttpResponse<String>> r2 =
          CompletableFuture.supplyAsync(() -> postUnchecked(base + "/stock/" + sku + "/reservations?units=3"));
      HttpResponse<String> a = r1.get(30, TimeUnit.SECONDS);
      HttpResponse<String> b = r2.get(30, TimeUnit.SECONDS);
      assertEquals(200, a.statusCode(), a.body());
      assertEquals(200, b.statusCode(), b.body());
      assertTrue(token(a.body()) != token(b.body()), a.body() + " " + b.body());

      String stats =
          http.send(
                  HttpRequest.newBuilder(URI.create(base + "/stats")).GET().build(),
                  HttpResponse.BodyHandlers.ofString())
              .body();
      assertTrue(stats.contains("\"charges\":1"), stats);
      assertTrue(stats.contains("\"shipments\":1"), stats);
      assertTrue(stats.contains("\"" + sku + "\":5"), stats);
    } finally {
      app.destroy();
      if (!app.waitFor(15, TimeUnit.SECONDS)) {
        app.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
      }
    }
  }

  private static long token(String body) {
    Matcher m = Pattern.compile("\"fencingToken\":(\\d+)").matcher(body);
    assertTrue(m.find(), body);
    return Long.parseLong(m.group(1));
  }

  private HttpResponse<String> post(String url) throws IOException, InterruptedException {
    HttpResponse<String> r =
        http.send(
            HttpRequest.newBuilder(URI.create(url))
                .POST(HttpRequest.BodyPublishers.noBody())
                .build(),
            HttpResponse.BodyHandlers.ofString());
    assertEquals(200, r.statusCode(), r.body());
    return r;
  }

  private HttpResponse<String> postUnchecked(String url) {
    try {
      return http.send(
          HttpRequest.newBuilder(URI.create(url)).POST(HttpRequest.BodyPublishers.noBody()).build(),
          HttpResponse.BodyHandlers.ofString());
    } catch (IOException | InterruptedException e) {
      throw new IllegalStateException(e);
    }
  }

  private void awaitUp(Process app, int port, Path log) throws Exception {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(90);
    while (System.nanoTime() < deadline) {
      if (!app.isAlive()) {
        throw new IllegalStateException(
            "the example exited with " + app.exitValue() + ":\n" + Files.readString(log));
      }
      try {
        HttpResponse<String> r =
            http.send(
                HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/stats"))
                    .timeout(Duration.ofSeconds(2))
                    .GET()
                    .build(),
                HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() == 200) {
          return;
        }
      } catch (IOException e) {
        // not listening yet
      }
      Processes.sleep(200); // real time must pass for the example's JVM to start
    }
    throw new IllegalStateException("the example did not start within 90s:\n" + Files.readString(log));
  }
}
