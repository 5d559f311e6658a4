package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.Event;

/**
 * Handles one event of a {@link Subscription}: returning acks it, throwing nacks it (it is
 * delivered again, with {@code getDeliveryCount()} increased; after
 * {@link RetryAfterException#retryAfter()} when the exception is one). Delivery is at least once:
 * make it idempotent, keyed by {@code event.getEventId()}.
 */
@FunctionalInterface
public interface EventHandler {
  void handle(Event event) throws Exception;
}
