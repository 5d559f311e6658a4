package io.github.seeda88e5317.resilience;

import java.time.Instant;

/**
 * The wait for a lock ended without it: someone else holds it. This is an expected outcome, not a
 * sidecar error; it tells who holds the lock.
 */
public class NotAcquiredException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final String key;
  private final String holderOwner;
  private final long holderFencingToken;
  private final transient Instant holderExpireTime;

  NotAcquiredException(
      String key, String holderOwner, long holderFencingToken, Instant holderExpireTime) {
    super("resilience: lock \"" + key + "\" not acquired: held by \"" + holderOwner + "\"");
    this.key = key;
    this.holderOwner = holderOwner;
    this.holderFencingToken = holderFencingToken;
    this.holderExpireTime = holderExpireTime;
  }

  public String key() {
    return key;
  }

  /** The owner label of the current holder (may be empty). */
  public String holderOwner() {
    return holderOwner;
  }

  /** The current holder's fencing token. */
  public long holderFencingToken() {
    return holderFencingToken;
  }

  /** When the current holder's lease expires unless renewed (null if unknown). */
  public Instant holderExpireTime() {
    return holderExpireTime;
  }
}
