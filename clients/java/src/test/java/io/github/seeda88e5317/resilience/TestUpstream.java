package io.github.seeda88e5317.resilience;

import static java.nio.charset.StandardCharsets.UTF_8;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * A real HTTP server on a loopback port, the upstream the sidecar calls in the breaker, saga and
 * tracing tests, and a sidecar whose config declares it. It records every request it gets.
 *
 * <ul>
 *   <li>{@code /echo...}: 200, {@code x-upstream: test}, body {@code "<METHOD> <path> <body>"}
 *   <li>{@code /status/<code>}: that status
 *   <li>{@code /slow}: 200 after 3 s
 *   <li>anything else (e.g. {@code /compensate/<step>}): 200, empty
 * </ul>
 */
final class TestUpstream implements AutoCloseable {
  /** One request as received. */
  record Request(String method, String path, Map<String, List<String>> headers, String body) {
    String header(String name) {
      for (var e : headers.entrySet()) {
        if (e.getKey().equalsIgnoreCase(name) && !e.getValue().isEmpty()) {
          return e.getValue().get(0);
        }
      }
      return null;
    }
  }

  final HttpServer server;
  final ExecutorService executor = Executors.newCachedThreadPool();
  final ConcurrentLinkedQueue<Request> requests = new ConcurrentLinkedQueue<>();

  TestUpstream() {
    try {
      server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 50);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    server.createContext("/", this::handle);
    server.setExecutor(executor);
    server.start();
  }

  String url() {
    return "http://127.0.0.1:" + server.getAddress().getPort();
  }

  List<Request> requests(String pathPrefix) {
    return requests.stream().filter(r -> r.path().startsWith(pathPrefix)).toList();
  }

  private void handle(HttpExchange ex) throws IOException {
    String body = new String(ex.getRequestBody().readAllBytes(), UTF_8);
    String path = ex.getRequestURI().getRawPath();
    requests.add(new Request(ex.getRequestMethod(), path, Map.copyOf(ex.getRequestHeaders()), body));
    int status = 200;
    byte[] out = new byte[0];
    if (path.startsWith("/echo")) {
      ex.getResponseHeaders().add("x-upstream", "test");
      out = (ex.getRequestMethod() + " " + path + " " + body).getBytes(UTF_8);
    } else if (path.startsWith("/status/")) {
      status = Integer.parseInt(path.substring("/status/".length()));
    } else if (path.equals("/slow")) {
      TestProcesses.sleep(3000); // real time: slower than the request's timeout
    }
    ex.sendResponseHeaders(status, out.length == 0 ? -1 : out.length);
    if (out.length > 0) {
      ex.getResponseBody().write(out);
    }
    ex.close();
  }

  /**
   * The sidecar config of the tests: upstream {@code java-http} (this server), {@code java-dead}
   * (a port nothing listens on), {@code java-flaky} (this server again, with its own breaker), and
   * the breakers {@code java-guard} (opens after 3 failures in a row, for 1 s) and {@code
   * java-flaky} (opens after 2 failures, for 30 s).
   */
  String config() {
    int dead = TestProcesses.freePort();
    return String.join(
        "\n",
        "breakers:",
        "  java-guard: {consecutive_failures: 3, open_duration: 1s, half_open_max_calls: 1}",
        "  java-flaky: {consecutive_failures: 2, open_duration: 30s}",
        "upstreams:",
        "  java-http:",
        "    url: " + url(),
        "    timeout: 2s",
        "    retry: {max_attempts: 1}",
        "    compensation_retry: {max_attempts: 3, initial_backoff: 50ms, max_backoff: 200ms}",
        "  java-flaky:",
        "    url: " + url(),
        "    timeout: 2s",
        "    retry: {max_attempts: 1}",
        "  java-dead:",
        "    url: http://127.0.0.1:" + dead,
        "    timeout: 500ms",
        "    retry: {max_attempts: 1}",
        "");
  }

  /** A sidecar on the shared Redis whose config declares this upstream. */
  TestProcesses.Sidecar startSidecar(SidecarExtension.Env env, String name) {
    Path dir = TestProcesses.workDir(name);
    Path config = dir.resolve("sidecar.yaml");
    try {
      Files.writeString(config, config(), UTF_8);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return TestProcesses.Sidecar.start(
        dir, env.redis().url(), null, null, List.of("--config", config.toString()));
  }

  @Override
  public void close() {
    server.stop(0);
    executor.shutdownNow();
  }
}
