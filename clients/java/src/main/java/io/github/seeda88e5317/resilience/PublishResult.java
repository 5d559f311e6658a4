package io.github.seeda88e5317.resilience;

/**
 * What {@link ResilienceClient#publish} returns.
 *
 * @param eventId the event's id in its topic ({@code "<ms>-<seq>"}, increasing in publish order)
 * @param duplicate true when the idempotency key had been published before: nothing was appended
 *     and {@code eventId} is the first event's
 */
public record PublishResult(String eventId, boolean duplicate) {}
