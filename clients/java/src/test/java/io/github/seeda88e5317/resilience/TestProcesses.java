package io.github.seeda88e5317.resilience;

import static java.nio.charset.StandardCharsets.UTF_8;

import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import java.io.File;
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
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * Starts the real processes the tests run against: redis-server and the sidecar binary, on free
 * loopback ports, with bounded waits for readiness, and destroys them afterwards (and at JVM exit,
 * should a test run be cut short).
 */
final class TestProcesses {
  private TestProcesses() {}

  private static final Set<Process> LIVE = ConcurrentHashMap.newKeySet();

  static {
    Runtime.getRuntime().addShutdownHook(new Thread(() -> LIVE.forEach(Process::destroyForcibly)));
  }

  /** The repository root (clients/java/../..). */
  static Path repoRoot() {
    String p = System.getProperty("resilience.repo.root", "");
    return (p.isEmpty() ? Path.of("../..") : Path.of(p)).toAbsolutePath().normalize();
  }

  /** clients/java/target. */
  static Path buildDir() {
    String p = System.getProperty("resilience.build.dir", "");
    return (p.isEmpty() ? Path.of("target") : Path.of(p)).toAbsolutePath().normalize();
  }

  /** A fresh directory under target/ for one test's files and logs. */
  static Path workDir(String name) {
    try {
      Path dir = buildDir().resolve("test-work");
      Files.createDirectories(dir);
      return Files.createTempDirectory(dir, name + "-");
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /** The sidecar binary: -Dsidecar.bin, else $SIDECAR_BIN, else .bin/sidecar in the repository. */
  static Path sidecarBinary() {
    String p = System.getProperty("sidecar.bin", "");
    if (p.isEmpty()) {
      p = System.getenv().getOrDefault("SIDECAR_BIN", "");
    }
    Path bin = p.isEmpty() ? repoRoot().resolve(".bin/sidecar") : Path.of(p).toAbsolutePath();
    if (!Files.isExecutable(bin)) {
      throw new IllegalStateException(
          "sidecar binary "
              + bin
              + " not found: build it with `cd "
              + repoRoot()
              + " && go build -o .bin/sidecar ./cmd/sidecar`, or set SIDECAR_BIN");
    }
    return bin;
  }

  static int freePort() {
    try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return s.getLocalPort();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /** The java executable of this JVM, for child JVMs. */
  static String javaBin() {
    return Path.of(System.getProperty("java.home"), "bin", "java").toString();
  }

  /** The test runtime class path: classes, test classes and every dependency. */
  static String testClassPath() {
    Path target = buildDir();
    try {
      String deps = Files.readString(target.resolve("test-classpath.txt"), UTF_8).strip();
      return target.resolve("classes")
          + File.pathSeparator
          + target.resolve("test-classes")
          + File.pathSeparator
          + deps;
    } catch (IOException e) {
      throw new UncheckedIOException(
          "target/test-classpath.txt is written by `mvn test-compile`", e);
    }
  }

  static Process start(ProcessBuilder pb) {
    try {
      Process p = pb.start();
      LIVE.add(p);
      p.onExit().thenRun(() -> LIVE.remove(p));
      return p;
    } catch (IOException e) {
      throw new UncheckedIOException("cannot start " + pb.command(), e);
    }
  }

  static void stop(Process p, Duration grace) {
    if (p == null || !p.isAlive()) {
      return;
    }
    p.destroy(); // SIGTERM: a graceful stop
    try {
      if (!p.waitFor(grace.toMillis(), TimeUnit.MILLISECONDS)) {
        p.destroyForcibly();
        p.waitFor(10, TimeUnit.SECONDS);
      }
    } catch (InterruptedException e) {
      p.destroyForcibly();
      Thread.currentThread().interrupt();
    }
  }

  /** Sends a signal (e.g. STOP, CONT) to a process. */
  static void signal(Process p, String sig) {
    try {
      Process k = new ProcessBuilder("kill", "-" + sig, Long.toString(p.pid())).inheritIO().start();
      if (!k.waitFor(10, TimeUnit.SECONDS) || k.exitValue() != 0) {
        throw new IllegalStateException("kill -" + sig + " " + p.pid() + " failed");
      }
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException(e);
    }
  }

  static String tail(Path log) {
    try {
      List<String> lines = Files.exists(log) ? Files.readAllLines(log, UTF_8) : List.of();
      return String.join("\n", lines.subList(Math.max(0, lines.size() - 20), lines.size()));
    } catch (IOException e) {
      return "(cannot read " + log + ": " + e + ")";
    }
  }

  /** A redis-server on a free loopback port, without persistence. */
  static final class Redis implements AutoCloseable {
    final int port;
    final Process process;
    final Path log;

    private Redis(int port, Process process, Path log) {
      this.port = port;
      this.process = process;
      this.log = log;
    }

    static Redis start(Path dir) {
      IllegalStateException last = null;
      for (int attempt = 0;
          attempt < 3;
          attempt++) { // a free port can be taken between probe and bind
        int port = freePort();
        Path log = dir.resolve("redis-" + port + ".log");
        ProcessBuilder pb =
            new ProcessBuilder(
                    "redis-server",
                    "--port",
                    Integer.toString(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    dir.toString())
                .redirectErrorStream(true)
                .redirectOutput(log.toFile());
        Process p;
        try {
          p = pb.start();
        } catch (IOException e) {
          throw new IllegalStateException(
              "redis-server is not on PATH (the sidecar's tests need a real"
                  + " one: apt-get install redis-server, or scripts/ensure-redis.sh)",
              e);
        }
        LIVE.add(p);
        Redis r = new Redis(port, p, log);
        try {
          r.awaitPong(Duration.ofSeconds(10));
          return r;
        } catch (IllegalStateException e) {
          r.close();
          last = e;
        }
      }
      throw last;
    }

    String url() {
      return "redis://127.0.0.1:" + port + "/0";
    }

    private void awaitPong(Duration bound) {
      long deadline = System.nanoTime() + bound.toNanos();
      while (System.nanoTime() < deadline) {
        if (!process.isAlive()) {
          throw new IllegalStateException("redis-server exited:\n" + tail(log));
        }
        try (Socket s = new Socket(InetAddress.getLoopbackAddress(), port)) {
          s.setSoTimeout(1000);
          OutputStream out = s.getOutputStream();
          out.write("PING\r\n".getBytes(UTF_8));
          out.flush();
          InputStream in = s.getInputStream();
          byte[] buf = new byte[7];
          int n = in.readNBytes(buf, 0, 7);
          if (n == 7 && new String(buf, UTF_8).equals("+PONG\r\n")) {
            return;
          }
        } catch (IOException e) {
          // not listening yet
        }
        sleep(20);
      }
      throw new IllegalStateException(
          "redis-server did not answer PING within " + bound + ":\n" + tail(log));
    }

    @Override
    public void close() {
      stop(process, Duration.ofSeconds(5));
    }
  }

  /** The sidecar binary, listening on a loopback port or a unix socket. */
  static final class Sidecar implements AutoCloseable {
    final String address;
    final Process process;
    final Path log;

    private Sidecar(String address, Process process, Path log) {
      this.address = address;
      this.process = process;
      this.log = log;
    }

    /**
     * Starts the sidecar on {@code redisUrl} (null: the embedded store), with {@code tokenFile}
     * (null: no authentication), listening on {@code listen} (null: a free loopback port), and
     * waits until its health service says SERVING.
     */
    static Sidecar start(Path dir, String redisUrl, Path tokenFile, String listen) {
      return start(dir, redisUrl, tokenFile, listen, List.of());
    }

    /** {@link #start(Path, String, Path, String)} with extra flags (e.g. {@code --config}). */
    static Sidecar start(
        Path dir, String redisUrl, Path tokenFile, String listen, List<String> extraArgs) {
      IllegalStateException last = null;
      for (int attempt = 0; attempt < 3; attempt++) {
        String address = listen != null ? listen : "127.0.0.1:" + freePort();
        Path log = dir.resolve("sidecar-" + attempt + ".log");
        List<String> cmd =
            new ArrayList<>(
                List.of(
                    sidecarBinary().toString(),
                    "--listen",
                    address,
                    "--metrics-listen",
                    "",
                    "--shutdown-timeout",
                    "2s"));
        if (redisUrl != null) {
          cmd.addAll(List.of("--redis-url", redisUrl));
        }
        if (tokenFile != null) {
          cmd.addAll(List.of("--api-token-file", tokenFile.toString()));
        }
        cmd.addAll(extraArgs);
        ProcessBuilder pb =
            new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile());
        // Only the flags above configure it, whatever this environment says.
        pb.environment().keySet().removeIf(k -> k.startsWith("SIDECAR_"));
        Process p = TestProcesses.start(pb);
        Sidecar s = new Sidecar(address, p, log);
        try {
          s.awaitServing(Duration.ofSeconds(20));
          return s;
        } catch (IllegalStateException e) {
          s.close();
          last = e;
          if (listen != null) {
            break;
          }
        }
      }
      throw last;
    }

    private void awaitServing(Duration bound) {
      long deadline = System.nanoTime() + bound.toNanos();
      try (ResilienceClient probe =
          ResilienceClient.builder().environment(Map.of()).address(address).build()) {
        ManagedChannel ch = probe.channel();
        while (System.nanoTime() < deadline) {
          if (!process.isAlive()) {
            throw new IllegalStateException(
                "sidecar exited with " + process.exitValue() + ":\n" + tail(log));
          }
          try {
            HealthCheckResponse r =
                HealthGrpc.newBlockingStub(ch)
                    .withDeadlineAfter(500, TimeUnit.MILLISECONDS)
                    .check(HealthCheckRequest.getDefaultInstance());
            if (r.getStatus() == HealthCheckResponse.ServingStatus.SERVING) {
              return;
            }
          } catch (StatusRuntimeException e) {
            // not listening yet, or not serving yet
          }
          sleep(25);
        }
      }
      throw new IllegalStateException(
          "sidecar at " + address + " not SERVING within " + bound + ":\n" + tail(log));
    }

    void freeze() {
      signal(process, "STOP");
    }

    void thaw() {
      signal(process, "CONT");
    }

    @Override
    public void close() {
      if (process.isAlive()) {
        try {
          signal(process, "CONT"); // a frozen process cannot handle SIGTERM
        } catch (RuntimeException ignored) {
          // it exited meanwhile
        }
      }
      stop(process, Duration.ofSeconds(5));
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
}
