package io.github.seeda88e5317.resilience;

import java.time.Duration;
import java.util.List;
import java.util.Objects;

/**
 * Options of a {@link BreakerGuard}. Immutable: each method returns a copy.
 *
 * <pre>{@code
 * BreakerOptions.defaults().permitTtl(Duration.ofSeconds(10)).ignoreExceptions(NotFoundException.class)
 * }</pre>
 */
public final class BreakerOptions {
  private static final BreakerOptions DEFAULTS = new BreakerOptions(null, List.of());

  private final Duration permitTtl; // null: the sidecar's default (60 s)
  private final List<Class<? extends Throwable>> ignored;

  private BreakerOptions(Duration permitTtl, List<Class<? extends Throwable>> ignored) {
    this.permitTtl = permitTtl;
    this.ignored = ignored;
  }

  /** The sidecar's permit TTL (60 s); every exception is a failure. */
  public static BreakerOptions defaults() {
    return DEFAULTS;
  }

  /**
   * How long the sidecar waits for a call's outcome before it counts the call as failed (1 ms to
   * 10 min; default 60 s). Choose it longer than the guarded call can take.
   */
  public BreakerOptions permitTtl(Duration permitTtl) {
    return new BreakerOptions(Objects.requireNonNull(permitTtl, "permitTtl"), ignored);
  }

  /**
   * Exceptions (and their subclasses) that say nothing about the dependency's health, e.g. a
   * validation error or "not found": reported as ignored (nothing counted) instead of failures.
   * Interruptions and cancellations are always ignored.
   */
  @SafeVarargs
  public final BreakerOptions ignoreExceptions(Class<? extends Throwable>... types) {
    List<Class<? extends Throwable>> all = new java.util.ArrayList<>(ignored);
    for (Class<? extends Throwable> t : types) {
      all.add(Objects.requireNonNull(t, "type"));
    }
    return new BreakerOptions(permitTtl, List.copyOf(all));
  }

  /** The permit TTL given, or null for the sidecar's default. */
  public Duration permitTtl() {
    return permitTtl;
  }

  boolean ignores(Throwable t) {
    for (Class<? extends Throwable> c : ignored) {
      if (c.isInstance(t)) {
        return true;
      }
    }
    return false;
  }

  @Override
  public String toString() {
    return "BreakerOptions{permitTtl=" + permitTtl + ", ignoreExceptions=" + ignored + "}";
  }
}
