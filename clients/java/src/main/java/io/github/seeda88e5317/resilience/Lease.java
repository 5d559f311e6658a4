package io.github.seeda88e5317.resilience;

import java.time.Instant;

/**
 * A held lock as the application sees it. Pass {@link #fencingToken()} to the resource the lock
 * protects (a {@code fence} column, a storage API) and have it refuse any write carrying a token
 * lower than the highest it has seen: that stops a holder that paused past its TTL.
 *
 * @param key the lock's key
 * @param fencingToken strictly increasing per key across every grant
 * @param expireTime when the lease expires unless renewed (a session renews it every TTL/3)
 * @param owner the label others see as the holder
 */
public record Lease(String key, long fencingToken, Instant expireTime, String owner) {}
