package io.github.seeda88e5317.resilience;

import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.junit.platform.engine.TestExecutionResult;
import org.junit.platform.engine.TestSource;
import org.junit.platform.engine.support.descriptor.ClassSource;
import org.junit.platform.engine.support.descriptor.MethodSource;
import org.junit.platform.launcher.TestExecutionListener;
import org.junit.platform.launcher.TestIdentifier;
import org.junit.platform.launcher.TestPlan;

/**
 * Records, for {@link ScenarioCoverageTest}, which scenario ids (tags {@code scenario:<id>}) have
 * a passing test in this run, and which test classes and methods the run selected. Registered with
 * the JUnit Platform launcher through META-INF/services.
 */
public final class ScenarioRecorder implements TestExecutionListener {
  /** The tag prefix that marks a test as the test of a scenario of clients/scenarios.txt. */
  static final String PREFIX = "scenario:";

  static final Set<String> PASSED = ConcurrentHashMap.newKeySet();

  /** Test class name to the number of test methods the run selected in it. */
  static final Map<String, Integer> SELECTED = new ConcurrentHashMap<>();

  static volatile boolean planSeen;

  @Override
  public void testPlanExecutionStarted(TestPlan plan) {
    planSeen = true;
    for (TestIdentifier root : plan.getRoots()) {
      for (TestIdentifier id : plan.getDescendants(root)) {
        if (!id.isTest()) {
          continue;
        }
        TestSource source = id.getSource().orElse(null);
        String cls =
            source instanceof MethodSource m
                ? m.getClassName()
                : source instanceof ClassSource c ? c.getClassName() : null;
        if (cls != null) {
          SELECTED.merge(cls, 1, Integer::sum);
        }
      }
    }
  }

  @Override
  public void executionFinished(TestIdentifier id, TestExecutionResult result) {
    if (!id.isTest() || result.getStatus() != TestExecutionResult.Status.SUCCESSFUL) {
      return;
    }
    id.getTags().stream()
        .map(t -> t.getName())
        .filter(n -> n.startsWith(PREFIX))
        .forEach(n -> PASSED.add(n.substring(PREFIX.length())));
  }
}
