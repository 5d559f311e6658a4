package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.StartFrom;
import java.time.Duration;
import java.util.Objects;

/**
 * Options of {@link ResilienceClient#subscribe}. Immutable: each method returns a copy. Unset
 * values are the sidecar's defaults.
 *
 * <pre>{@code
 * SubscribeOptions.defaults().visibilityTimeout(Duration.ofMinutes(2)).maxDeliveries(5)
 * }</pre>
 */
public final class SubscribeOptions {
  private static final SubscribeOptions DEFAULTS =
      new SubscribeOptions(0, null, 0, StartFrom.START_FROM_UNSPECIFIED, Duration.ZERO);

  private final int maxInFlight;
  private final Duration visibilityTimeout; // null: the sidecar's default
  private final int maxDeliveries;
  private final StartFrom startFrom;
  private final Duration nackDelay;

  private SubscribeOptions(
      int maxInFlight,
      Duration visibilityTimeout,
      int maxDeliveries,
      StartFrom startFrom,
      Duration nackDelay) {
    this.maxInFlight = maxInFlight;
    this.visibilityTimeout = visibilityTimeout;
    this.maxDeliveries = maxDeliveries;
    this.startFrom = startFrom;
    this.nackDelay = nackDelay;
  }

  /** The sidecar's defaults: 16 in flight, its visibility timeout and max deliveries, earliest. */
  public static SubscribeOptions defaults() {
    return DEFAULTS;
  }

  /** Events delivered and not yet acked or nacked (1-1000; default 16). */
  public SubscribeOptions maxInFlight(int n) {
    return new SubscribeOptions(n, visibilityTimeout, maxDeliveries, startFrom, nackDelay);
  }

  /**
   * How long a delivered event may stay unacked before it is redelivered (100 ms to 12 h; default
   * the sidecar's {@code events.visibility_timeout}, 30 s). Choose it longer than the handler runs.
   */
  public SubscribeOptions visibilityTimeout(Duration d) {
    return new SubscribeOptions(
        maxInFlight, Objects.requireNonNull(d, "visibilityTimeout"), maxDeliveries, startFrom,
        nackDelay);
  }

  /**
   * Deliveries before an event moves to the dead-letter topic {@code <topic>.dead} (1-1000;
   * default the sidecar's, 10).
   */
  public SubscribeOptions maxDeliveries(int n) {
    return new SubscribeOptions(maxInFlight, visibilityTimeout, n, startFrom, nackDelay);
  }

  /** Where the group starts when this call creates it (default earliest). */
  public SubscribeOptions startFrom(StartFrom s) {
    return new SubscribeOptions(
        maxInFlight, visibilityTimeout, maxDeliveries, Objects.requireNonNull(s, "startFrom"),
        nackDelay);
  }

  /**
   * The delay of the redelivery of an event whose handler threw (default 0: at once); a {@link
   * RetryAfterException} sets its own.
   */
  public SubscribeOptions nackDelay(Duration d) {
    return new SubscribeOptions(
        maxInFlight, visibilityTimeout, maxDeliveries, startFrom,
        Objects.requireNonNull(d, "nackDelay"));
  }

  public int maxInFlight() {
    return maxInFlight;
  }

  /** The visibility timeout given, or {@code null} for the sidecar's default. */
  public Duration visibilityTimeout() {
    return visibilityTimeout;
  }

  public int maxDeliveries() {
    return maxDeliveries;
  }

  public StartFrom startFrom() {
    return startFrom;
  }

  public Duration nackDelay() {
    return nackDelay;
  }
}
