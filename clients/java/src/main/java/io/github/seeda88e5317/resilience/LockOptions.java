package io.github.seeda88e5317.resilience;

import java.time.Duration;
import java.util.Objects;

/**
 * Options of {@link ResilienceClient#holdLock}, {@link ResilienceClient#withLock} and {@link
 * ResilienceClient#lock} (the explicit handle). Immutable: each method returns a copy.
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

  /** The smallest safety margin: {@value #MIN_SAFETY_MARGIN_MILLIS} ms. */
  public static final long MIN_SAFETY_MARGIN_MILLIS = 100;

  /**
   * The safety margin of a lease of {@code ttl}: max(TTL/10, 100 ms). A lease confirmed at t (on
   * this process's monotonic clock) counts as held until t + TTL - margin, the lease's local
   * deadline; the margin covers the time the confirmation took to arrive and timer delays, so the
   * holder stops before the lease can expire in the store. (With TTLs near the 100 ms minimum little
   * or nothing is left: choose TTLs of a second or more.)
   */
  public static Duration safetyMargin(Duration ttl) {
    Duration tenth = ttl.dividedBy(10);
    Duration min = Duration.ofMillis(MIN_SAFETY_MARGIN_MILLIS);
    return tenth.compareTo(min) >= 0 ? tenth : min;
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
