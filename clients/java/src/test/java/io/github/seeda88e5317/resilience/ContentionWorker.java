package io.github.seeda88e5317.resilience;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.time.Duration;

/**
 * One contender of the two-process lock test. {@code main} is run in a second JVM; the test JVM
 * runs {@link #rounds} itself at the same time. Each round takes the lock, then does a deliberately
 * slow read-modify-write of a shared file: without mutual exclusion, updates are lost.
 *
 * <p>The file is {@code "<count> <highest fencing token>"}; a write whose token is not above the
 * recorded one is refused, as a fenced resource would. Each write is also appended to {@code
 * <file>.log} as {@code "<writer> <token>"}.
 */
public final class ContentionWorker {
  private ContentionWorker() {}

  /** Args: key, shared file, rounds, writer name. Reads SIDECAR_ADDR / SIDECAR_API_TOKEN_FILE. */
  public static void main(String[] args) throws Exception {
    String key = args[0];
    Path file = Path.of(args[1]);
    int n = Integer.parseInt(args[2]);
    String name = args[3];
    try (ResilienceClient client = ResilienceClient.create()) {
      // Connected, authenticated and warmed up (a session on another key) before the race starts.
      client.withLock(key + "/warm-up", (lease, cancelled) -> null);
      System.out.println("ready");
      System.out.flush();
      BufferedReader in = new BufferedReader(new InputStreamReader(System.in, UTF_8));
      if (!"go".equals(in.readLine())) {
        throw new IllegalStateException("expected go");
      }
      rounds(client, key, file, n, name);
      System.out.println("done " + n);
    }
  }

  static void rounds(ResilienceClient client, String key, Path file, int n, String name)
      throws IOException {
    LockOptions opts =
        LockOptions.defaults()
            .ttl(Duration.ofSeconds(5))
            .waitTimeout(Duration.ofSeconds(30))
            .owner(name);
    for (int i = 0; i < n; i++) {
      client.withLock(
          key,
          opts,
          (lease, cancelled) -> {
            update(file, lease.fencingToken(), name);
            cancelled.throwIfCancelled();
            return null;
          });
    }
  }

  /** Read, pause, write: a lost update unless the lock excludes the other writer. */
  static void update(Path file, long token, String name) throws IOException {
    String[] parts = Files.readString(file, UTF_8).strip().split(" ");
    long count = Long.parseLong(parts[0]);
    long fence = Long.parseLong(parts[1]);
    if (token <= fence) {
      throw new IllegalStateException(
          "stale fencing token " + token + " <= " + fence + " from " + name);
    }
    try {
      Thread.sleep(3); // widen the race window
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException(e);
    }
    Path tmp = file.resolveSibling(file.getFileName() + "." + name + ".tmp");
    Files.writeString(tmp, (count + 1) + " " + token + "\n", UTF_8);
    Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    try {
      Files.writeString(
          file.resolveSibling(file.getFileName() + ".log"),
          name + " " + token + "\n",
          UTF_8,
          StandardOpenOption.CREATE,
          StandardOpenOption.APPEND);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
