package io.github.seeda88e5317.resilience.spring;

import static java.nio.charset.StandardCharsets.UTF_8;

import io.github.seeda88e5317.resilience.ResilienceClient;
import io.github.seeda88e5317.resilience.v1.GetIdempotencyRequest;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * The real processes the tests run against: one redis-server and two sidecars on it (A and B), for
 * the whole test JVM, plus sidecars a test starts and stops itself. Logs are in
 * target/test-work/.
 */
final class Processes {

  private static Processes shared;

  final Path dir;
  final Process redis;
  final int redisPort;
  final Sidecar a;
  final Sidecar b;

  private Processes() throws IOException {
    String build = System.getProperty("resilience.build.dir", "target");
    dir = Files.createDirectories(Path.of(build, "test-work")).toAbsolutePath();
    redisPort = freePort();
    redis =
        new ProcessBuilder(
                "redis-server",
                "--port",
                Integer.toString(redisPort),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.toString())
            .redirectErrorStream(true)
            .redirectOutput(dir.resolve("redis.log").toFile())
            .start();
    awaitPong();
    a = startSidecar("a");
    b = startSidecar("b");
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  a.close();
                  b.close();
                  stop(redis);
                }));
  }

  /** Redis and sidecars A and B, started on first use. */
  static synchronized Processes shared() {
    if (shared == null) {
      try {
        shared = new Processes();
      } catch (IOException e) {
        throw new UncheckedIOException(
            "cannot start redis-server (on PATH?) or the sidecar (" + sidecarBinary() + ")", e);
      }
    }
    return shared;
  }

  String redisUrl() {
    return "redis://127.0.0.1:" + redisPort + "/0";
  }

  /** A new sidecar on the shared Redis; waits until it answers. */
  Sidecar startSidecar(String name) {
    return startSidecar(name, null);
  }

  /**
   * A new sidecar on the shared Redis, requiring the API token in {@code tokenFile} when not null;
   * waits until it answers.
   */
  Sidecar startSidecar(String name, Path tokenFile) {
    String address = "127.0.0.1:" + freePort();
    Path log = dir.resolve("sidecar-" + name + "-" + System.nanoTime() + ".log");
    List<String> cmd =
        new ArrayList<>(
                List.of(
                    sidecarBinary().toString(),
                    "--listen",
                    address,
                    "--metrics-listen",
                    "",
                    "--http-listen",
                    "",
                    "--shutdown-timeout",
                    "2s",
                    "--redis-url",
                    redisUrl()));
    String token = "";
    if (tokenFile != null) {
      cmd.addAll(List.of("--api-token-file", tokenFile.toString()));
      try {
        token = Files.readString(tokenFile, UTF_8).strip();
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }
    ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile());
    pb.environment().keySet().removeIf(k -> k.startsWith("SIDECAR_"));
    Process p;
    try {
      p = pb.start();
    } catch (IOException e) {
      throw new UncheckedIOException("cannot start " + pb.command(), e);
    }
    Sidecar s = new Sidecar(address, p, log);
    s.awaitServing(token);
    return s;
  }

  static Path sidecarBinary() {
    String bin = System.getProperty("sidecar.bin", "");
    if (bin.isEmpty()) {
      bin = System.getenv().getOrDefault("SIDECAR_BIN", "");
    }
    if (bin.isEmpty()) {
      bin = Path.of(System.getProperty("resilience.repo.root", "../.."), ".bin", "sidecar").toString();
    }
    return Path.of(bin).toAbsolutePath();
  }

  static int freePort() {
    try (ServerSocket s = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
      return s.getLocalPort();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private void awaitPong() {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
    while (System.nanoTime() < deadline) {
      try (Socket s = new Socket(InetAddress.getLoopbackAddress(), redisPort)) {
        s.setSoTimeout(1000);
        OutputStream out = s.getOutputStream();
        out.write("PING\r\n".getBytes(UTF_8));
        out.flush();
        InputStream in = s.getInputStream();
        if (new String(in.readNBytes(7), UTF_8).equals("+PONG\r\n")) {
          return;
        }
      } catch (IOException e) {
        // not listening yet
      }
      sleep(20); // real time must pass for redis-server to start listening
    }
    throw new IllegalStateException("redis-server did not answer PING within 10s");
  }

  static void stop(Process p) {
    if (!p.isAlive()) {
      return;
    }
    p.destroy();
    try {
      if (!p.waitFor(5, TimeUnit.SECONDS)) {
        p.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  static void sleep(long millis) {
    try {
      Thread.sleep(millis);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException(e);
    }
  }

  /** A sidecar process listening on a loopback port. */
  static final class Sidecar implements AutoCloseable {
    final String address;
    final Process process;
    final Path log;

    Sidecar(String address, Process process, Path log) {
      this.address = address;
      this.process = process;
      this.log = log;
    }

    private void awaitServing(String token) {
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
      ResilienceClient.Builder b =
          ResilienceClient.builder().environment(Map.of()).address(address).connectWait(Duration.ZERO);
      if (!token.isEmpty()) {
        b.token(token);
      }
      try (ResilienceClient probe = b.build()) {
        while (System.nanoTime() < deadline) {
          if (!process.isAlive()) {
            throw new IllegalStateException("sidecar exited; see " + log);
          }
          try {
            probe
                .idempotency()
                .withDeadlineAfter(500, TimeUnit.MILLISECONDS)
                .getIdempotency(GetIdempotencyRequest.newBuilder().setKey("probe").build());
            return;
          } catch (StatusRuntimeException e) {
            // not serving yet
          }
          sleep(25); // real time must pass for the sidecar to start serving
        }
      }
      throw new IllegalStateException("sidecar at " + address + " not serving within 20s; see " + log);
    }

    @Override
    public void close() {
      stop(process);
    }
  }
}
