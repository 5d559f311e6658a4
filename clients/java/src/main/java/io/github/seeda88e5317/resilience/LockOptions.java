package io.github.seeda88e5317.resilience;

import java.time.Duration;
import java.util.Objects;

/**
 * Options of {@link ResilienceClient#holdLock} and {@link ResilienceClient#withLock}. Immutable:
 * each method returns a copy.
 *
 * <pre>{@code
 * LockOptions.defaults().ttl(Duration.ofSeconds(5)).waitTimeout(Duration.ofSeconds(2)).owner("worker-a")
 * }</pre>
 */
public final class LockOptions {
  private static final LockOptions DEFAULTS =
      new LockOptions(null, Duration.ZERO, "", Duration.ZERO);

  /** The lease TTL the sidecar uses when none is given. */
  public static final Duration DEFAULT_TTL = Duration.ofSeconds(10);

  private final Duration ttl; // null: the sidecar's default
  private final Duration waitTimeout;
  private final String owner;
  private final Duration maxHold;

  private LockOptions(Duration ttl, Duration waitTimeout, String owner, Duration maxHold) {
    this.ttl = ttl;
    this.waitTimeout = waitTimeout;
    this.owner = owner;
    this.maxHold = maxHold;
  }

  /** TTL from the sidecar (10 s), try once, no owner label, no max hold. */
  public static LockOptions defaults() {
    return DEFAULTS;
  }

  /**
   * The lease lifetime (100 ms to 24 h; default 10 s). A session renews it every TTL/3; if this
   * process dies the lock frees itself after at most the TTL.
   */
  public LockOptions ttl(Duration ttl) {
    return new LockOptions(Objects.requireNonNull(ttl, "ttl"), waitTimeout, owner, maxHold);
  }

  /** How long to wait for a held lock (0 to 5 min; default 0: try once). */
  public LockOptions waitTimeout(Duration waitTimeout) {
    return new LockOptions(ttl, Objects.requireNonNull(waitTimeout, "waitTimeout"), owner, maxHold);
  }

  /** The label others see as the holder (at most 512 bytes). */
  public LockOptions owner(String owner) {
    return new LockOptions(ttl, waitTimeout, Objects.requireNonNull(owner, "owner"), maxHold);
  }

  /**
   * After this long the sidecar releases the lock and the session reports it lost ({@code
   * MAX_HOLD}). 0 (the default) means no limit; otherwise 100 ms to 24 h.
   */
  public LockOptions maxHold(Duration maxHold) {
    return new LockOptions(ttl, waitTimeout, owner, Objects.requireNonNull(maxHold, "maxHold"));
  }

  /** The TTL given, or {@code null} for the sidecar's default. */
  public Duration ttl() {
    return ttl;
  }

  public Duration waitTimeout() {
    return waitTimeout;
  }

  public String owner() {
    return owner;
  }

  public Duration maxHold() {
    return maxHold;
  }

  /** The TTL the sidecar will use. */
  Duration effectiveTtl() {
    return ttl == null || ttl.isZero() ? DEFAULT_TTL : ttl;
  }

  @Override
  public String toString() {
    return "LockOptions{ttl="
        + ttl
        + ", waitTimeout="
        + waitTimeout
        + ", owner="
        + owner
        + ", maxHold="
        + maxHold
        + "}";
  }
}
