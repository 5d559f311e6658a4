package io.github.seeda88e5317.resilience;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

@ExtendWith(SidecarExtension.class)
class LockContentionTest {
  static final int ROUNDS = 30;

  @Test
  @Tag("scenario:lock-contention-fencing")
  @Timeout(120)
  void twoProcessesNeverLoseAnUpdate(SidecarExtension.Env env) throws Exception {
    Path dir = TestProcesses.workDir("contention");
    Path file = dir.resolve("counter");
    Files.writeString(file, "0 0\n");
    String key = "java/contention/" + System.nanoTime();

    ProcessBuilder pb =
        new ProcessBuilder(
                TestProcesses.javaBin(),
                "-cp",
                TestProcesses.testClassPath(),
                ContentionWorker.class.getName(),
                key,
                file.toString(),
                Integer.toString(ROUNDS),
                "child")
            .redirectError(dir.resolve("child.stderr").toFile());
    pb.environment().keySet().removeIf(k -> k.startsWith("SIDECAR_"));
    pb.environment().putAll(env.childEnvironment());
    Process child = TestProcesses.start(pb);
    try (ResilienceClient client = env.client()) {
      client.withLock(key + "/warm-up-parent", (lease, cancelled) -> null);
      BufferedReader out = new BufferedReader(new InputStreamReader(child.getInputStream(), UTF_8));
      assertEquals(
          "ready",
          out.readLine(),
          () -> "child did not start:\n" + TestProcesses.tail(dir.resolve("child.stderr")));

      Writer in = new OutputStreamWriter(child.getOutputStream(), UTF_8);
      in.write("go\n");
      in.flush();
      CompletableFuture<Void> here =
          CompletableFuture.runAsync(
              () -> {
                try {
                  ContentionWorker.rounds(client, key, file, ROUNDS, "parent");
                } catch (Exception e) {
                  throw new RuntimeException(e);
                }
              });
      here.get(100, TimeUnit.SECONDS);
      assertTrue(child.waitFor(100, TimeUnit.SECONDS), "child did not finish");
      assertEquals(
          0,
          child.exitValue(),
          () -> "child failed:\n" + TestProcesses.tail(dir.resolve("child.stderr")));
      assertEquals("done " + ROUNDS, out.readLine());
    } finally {
      TestProcesses.stop(child, Duration.ofSeconds(5));
    }

    String[] state = Files.readString(file, UTF_8).strip().split(" ");
    assertEquals(
        2 * ROUNDS, Long.parseLong(state[0]), "updates were lost: the lock did not exclude");

    List<String> log = Files.readAllLines(dir.resolve("counter.log"), UTF_8);
    assertEquals(2 * ROUNDS, log.size());
    long previous = 0;
    int switches = 0;
    String lastWriter = "";
    List<String> writers = new ArrayList<>();
    for (String line : log) {
      String[] p = line.split(" ");
      long token = Long.parseLong(p[1]);
      assertTrue(token > previous, "fencing tokens not strictly increasing: " + log);
      previous = token;
      if (!p[0].equals(lastWriter)) {
        switches++;
        lastWriter = p[0];
      }
      writers.add(p[0]);
    }
    assertEquals(ROUNDS, writers.stream().filter("child"::equals).count());
    assertEquals(ROUNDS, writers.stream().filter("parent"::equals).count());
    // Both processes really contended: the lock passed between them, not one run after the other.
    assertTrue(switches >= 3, "the two processes did not interleave: " + writers);
    assertEquals(Long.parseLong(state[1]), previous);
  }
}
