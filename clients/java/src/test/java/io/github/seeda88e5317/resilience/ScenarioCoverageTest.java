package io.github.seeda88e5317.resilience;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.reflect.Method;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;

/**
 * Fails the full test run when a scenario id of clients/scenarios.txt has no passing test tagged
 * {@code scenario:<id>} in this client (so a scenario cannot be forgotten in one language). Runs
 * after every other class ({@code @Order} with the ClassOrderer of junit-platform.properties). A
 * run filtered to a subset (-Dtest=..., an IDE running one class or method) skips the check: it
 * cannot see the whole suite.
 */
@Order(Integer.MAX_VALUE)
class ScenarioCoverageTest {
  static List<String> scenarioIds() throws IOException {
    Path file = TestProcesses.repoRoot().resolve("clients/scenarios.txt");
    List<String> ids = new ArrayList<>();
    for (String line : Files.readAllLines(file, UTF_8)) {
      String s = line.strip();
      if (!s.isEmpty() && !s.startsWith("#")) {
        ids.add(s);
      }
    }
    return ids;
  }

  /** Test classes of this suite that the run did not select, or selected only in part. */
  static List<String> unselected() throws IOException {
    Path dir = TestProcesses.buildDir().resolve("test-classes");
    Path pkg = dir.resolve(ScenarioCoverageTest.class.getPackageName().replace('.', '/'));
    List<String> missing = new ArrayList<>();
    try (Stream<Path> files = Files.list(pkg)) {
      for (Path f : files.sorted().toList()) {
        String name = f.getFileName().toString();
        if (!name.endsWith("Test.class") || name.contains("$")) {
          continue;
        }
        String cls = ScenarioCoverageTest.class.getPackageName() + "." + name.replace(".class", "");
        int declared = testMethods(cls);
        int selected = ScenarioRecorder.SELECTED.getOrDefault(cls, 0);
        if (declared > 0 && selected < declared) {
          missing.add(cls + " (" + selected + " of " + declared + " tests)");
        }
      }
    }
    return missing;
  }

  static int testMethods(String cls) {
    try {
      int n = 0;
      for (Method m : Class.forName(cls).getDeclaredMethods()) {
        if (m.isAnnotationPresent(Test.class) || m.isAnnotationPresent(ParameterizedTest.class)) {
          n++;
        }
      }
      return n;
    } catch (ClassNotFoundException e) {
      throw new IllegalStateException(e);
    }
  }

  @Test
  void everyScenarioOfTheContractHasAPassingTest() throws IOException {
    assertTrue(ScenarioRecorder.planSeen, "ScenarioRecorder is not registered with the launcher");
    List<String> ids = scenarioIds();
    assertFalse(ids.isEmpty(), "clients/scenarios.txt lists no scenario");
    List<String> unselected = unselected();
    Assumptions.assumeTrue(
        unselected.isEmpty(),
        () -> "a filtered run (not selected: " + unselected + "): the scenario check needs all");
    TreeSet<String> missing = new TreeSet<>(ids);
    missing.removeAll(ScenarioRecorder.PASSED);
    assertEquals(
        new TreeSet<>(),
        missing,
        "scenarios of clients/scenarios.txt without a passing test tagged \""
            + ScenarioRecorder.PREFIX
            + "<id>\" in the Java client");
  }
}
