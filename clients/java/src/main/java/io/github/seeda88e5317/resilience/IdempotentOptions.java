package io.github.seeda88e5317.resilience;

import java.time.Duration;
import java.util.Objects;

/**
 * Options of {@link ResilienceClient#idempotent}. Immutable: each method returns a copy.
 *
 * <pre>{@code
 * IdempotentOptions.defaults().leaseTtl(Duration.ofMinutes(2)).retention(Duration.ofDays(7))
 * }</pre>
 */
public final class IdempotentOptions {
  private static final IdempotentOptions DEFAULTS =
      new IdempotentOptions(
          Duration.ZERO, Duration.ZERO, Duration.ofSeconds(5), Duration.ofSeconds(60), 3);

  private final Duration leaseTtl;
  private final Duration retention;
  private final Duration inProgressWait;
  private final Duration maxWait;
  private final int unavailableRetries;

  private IdempotentOptions(
      Duration leaseTtl,
      Duration retention,
      Duration inProgressWait,
      Duration maxWait,
      int unavailableRetries) {
    this.leaseTtl = leaseTtl;
    this.retention = retention;
    this.inProgressWait = inProgressWait;
    this.maxWait = maxWait;
    this.unavailableRetries = unavailableRetries;
  }

  /**
   * Lease TTL and retention from the sidecar (30 s, 24 h), wait 5 s per call for a duplicate in
   * progress and 60 s in all, retry UNAVAILABLE 3 times.
   */
  public static IdempotentOptions defaults() {
    return DEFAULTS;
  }

  /**
   * How long the sidecar waits for this process to finish the operation before another caller may
   * take it over (1 s to 1 h; default 30 s). Choose it longer than the operation takes; {@link
   * Execution#checkpoint} extends it.
   */
  public IdempotentOptions leaseTtl(Duration leaseTtl) {
    return new IdempotentOptions(
        nonNegative(leaseTtl, "leaseTtl"), retention, inProgressWait, maxWait, unavailableRetries);
  }

  /** How long the result is kept for duplicates (1 s to 720 h; default 24 h). */
  public IdempotentOptions retention(Duration retention) {
    return new IdempotentOptions(
        leaseTtl, nonNegative(retention, "retention"), inProgressWait, maxWait, unavailableRetries);
  }

  /**
   * How long one call to the sidecar waits for a duplicate that is running the operation (0 to 5
   * min; default 5 s). The sidecar wakes the waiter when the duplicate completes.
   */
  public IdempotentOptions inProgressWait(Duration inProgressWait) {
    return new IdempotentOptions(
        leaseTtl,
        retention,
        nonNegative(inProgressWait, "inProgressWait"),
        maxWait,
        unavailableRetries);
  }

  /**
   * How long {@code idempotent} waits in all for a duplicate in progress before it throws {@link
   * IdempotencyInProgressException} (default 60 s).
   */
  public IdempotentOptions maxWait(Duration maxWait) {
    return new IdempotentOptions(
        leaseTtl, retention, inProgressWait, nonNegative(maxWait, "maxWait"), unavailableRetries);
  }

  /**
   * How many times a call that failed with UNAVAILABLE (store or sidecar unreachable) is retried,
   * after the delay the sidecar suggests (default 3).
   */
  public IdempotentOptions unavailableRetries(int unavailableRetries) {
    if (unavailableRetries < 0) {
      throw new IllegalArgumentException("unavailableRetries must be >= 0");
    }
    return new IdempotentOptions(leaseTtl, retention, inProgressWait, maxWait, unavailableRetries);
  }

  /** The lease TTL given; zero for the sidecar's default. */
  public Duration leaseTtl() {
    return leaseTtl;
  }

  /** The retention given; zero for the sidecar's default. */
  public Duration retention() {
    return retention;
  }

  public Duration inProgressWait() {
    return inProgressWait;
  }

  public Duration maxWait() {
    return maxWait;
  }

  public int unavailableRetries() {
    return unavailableRetries;
  }

  private static Duration nonNegative(Duration d, String name) {
    Objects.requireNonNull(d, name);
    if (d.isNegative()) {
      throw new IllegalArgumentException(name + " must not be negative");
    }
    return d;
  }

  @Override
  public String toString() {
    return "IdempotentOptions{leaseTtl="
        + leaseTtl
        + ", retention="
        + retention
        + ", inProgressWait="
        + inProgressWait
        + ", maxWait="
        + maxWait
        + ", unavailableRetries="
        + unavailableRetries
        + "}";
  }
}
