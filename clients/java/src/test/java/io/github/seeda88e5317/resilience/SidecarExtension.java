package io.github.seeda88e5317.resilience;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.ParameterContext;
import org.junit.jupiter.api.extension.ParameterResolver;

/**
 * Starts one real redis-server and one real sidecar on it (with an API token) for the whole test
 * run, shared by every test class that uses this extension, and stops both when the run ends. Tests
 * get the {@link Env} as a parameter.
 */
final class SidecarExtension implements BeforeAllCallback, ParameterResolver {
  private static final ExtensionContext.Namespace NS =
      ExtensionContext.Namespace.create(SidecarExtension.class);

  /** The shared processes and how to reach them. */
  record Env(TestProcesses.Redis redis, TestProcesses.Sidecar sidecar, String token, Path tokenFile)
      implements AutoCloseable {
    String address() {
      return sidecar.address;
    }

    /**
     * A client of the shared sidecar, configured explicitly (not from this process's environment).
     */
    ResilienceClient client() {
      return ResilienceClient.builder()
          .environment(Map.of())
          .address(address())
          .token(token)
          .build();
    }

    /** What a child process needs in its environment to reach the shared sidecar. */
    Map<String, String> childEnvironment() {
      return Map.of(
          ResilienceClient.ENV_ADDR,
          address(),
          ResilienceClient.ENV_TOKEN_FILE,
          tokenFile.toString());
    }

    @Override
    public void close() {
      sidecar.close();
      redis.close();
    }
  }

  @Override
  public void beforeAll(ExtensionContext context) {
    env(context);
  }

  private static Env env(ExtensionContext context) {
    return context.getRoot().getStore(NS).getOrComputeIfAbsent(Env.class, k -> start(), Env.class);
  }

  private static Env start() {
    Path dir = TestProcesses.workDir("shared");
    String token = "test-token-" + Long.toHexString(System.nanoTime());
    Path tokenFile = dir.resolve("api-token");
    try {
      Files.writeString(tokenFile, token + "\n");
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    TestProcesses.Redis redis = TestProcesses.Redis.start(dir);
    try {
      TestProcesses.Sidecar sidecar =
          TestProcesses.Sidecar.start(dir, redis.url(), tokenFile, null);
      return new Env(redis, sidecar, token, tokenFile);
    } catch (RuntimeException e) {
      redis.close();
      throw e;
    }
  }

  @Override
  public boolean supportsParameter(ParameterContext pc, ExtensionContext ec) {
    return pc.getParameter().getType() == Env.class;
  }

  @Override
  public Object resolveParameter(ParameterContext pc, ExtensionContext ec) {
    return env(ec);
  }
}
