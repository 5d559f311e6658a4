package io.github.seeda88e5317.resilience;

import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * Options of {@link ResilienceClient#startSaga}. Immutable: each method returns a copy.
 *
 * <pre>{@code
 * SagaOptions.defaults().timeout(Duration.ofMinutes(5)).metadata("order", "42")
 * }</pre>
 */
public final class SagaOptions {
  private static final SagaOptions DEFAULTS = new SagaOptions(Duration.ZERO, Map.of());

  private final Duration timeout;
  private final Map<String, String> metadata;

  private SagaOptions(Duration timeout, Map<String, String> metadata) {
    this.timeout = timeout;
    this.metadata = metadata;
  }

  /** The sidecar's timeout (1 h), no metadata. */
  public static SagaOptions defaults() {
    return DEFAULTS;
  }

  /**
   * After this long without {@link Saga#complete()} the sidecar compensates the saga (100 ms to
   * 720 h; zero: the sidecar's default, 1 h): the safety net when this process dies mid-saga.
   */
  public SagaOptions timeout(Duration timeout) {
    Objects.requireNonNull(timeout, "timeout");
    if (timeout.isNegative()) {
      throw new IllegalArgumentException("timeout must not be negative");
    }
    return new SagaOptions(timeout, metadata);
  }

  /** Adds a label shown by GetSaga and ListSagas (at most 32). */
  public SagaOptions metadata(String key, String value) {
    Map<String, String> m = new LinkedHashMap<>(metadata);
    m.put(Objects.requireNonNull(key, "key"), Objects.requireNonNull(value, "value"));
    return new SagaOptions(timeout, Map.copyOf(m));
  }

  public Duration timeout() {
    return timeout;
  }

  public Map<String, String> metadata() {
    return metadata;
  }
}
