package io.github.seeda88e5317.resilience;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** Runs examples/java/run.sh, as a user would, against the shared sidecar. */
@ExtendWith(SidecarExtension.class)
class ExampleTest {
  @Test
  @Timeout(120)
  void theShopExampleChargesOnceAndFencesTheStaleWorker(SidecarExtension.Env env) throws Exception {
    Path dir = TestProcesses.workDir("example");
    Path script = TestProcesses.repoRoot().resolve("examples/java/run.sh");
    ProcessBuilder pb =
        new ProcessBuilder("bash", script.toString(), "--no-build")
            .redirectErrorStream(true)
            .redirectOutput(dir.resolve("output").toFile());
    pb.environment().keySet().removeIf(k -> k.startsWith("SIDECAR_"));
    pb.environment().putAll(env.childEnvironment());
    Process p = TestProcesses.start(pb);
    assertTrue(p.waitFor(100, TimeUnit.SECONDS), "the example did not finish");
    String output = Files.readString(dir.resolve("output"), UTF_8);
    assertEquals(0, p.exitValue(), output);
    List<String> lines = output.lines().toList();
    assertEquals(3, lines.stream().filter(l -> l.startsWith("charge attempt ")).count(), output);
    assertTrue(output.contains("charges made: 1, same response every time: true"), output);
    assertTrue(output.contains("worker-b reserved 2: true"), output);
    assertTrue(
        output.matches("(?s).*worker-a \\(stale, token \\d+\\) reserved 3: false.*"), output);
    assertTrue(output.contains("worker-a release: LeaseLostException (LEASE_LOST)"), output);
    assertTrue(output.contains("order announced once: true"), output);
    assertTrue(output.contains("ship: courier unavailable on delivery 1, nacked"), output);
    assertTrue(output.contains("ship: shipped on delivery 2, acked"), output);
    assertEquals("OK", lines.get(lines.size() - 1), output);
  }
}
