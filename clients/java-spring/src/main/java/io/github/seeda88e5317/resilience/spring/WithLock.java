package io.github.seeda88e5317.resilience.spring;

import java.lang.annotation.Documented;
import java.lang.annotation.ElementType;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;

/**
 * Runs a Spring bean's method while holding the sidecar's distributed lock {@link #key} (a
 * {@code HoldLock} session, renewed by the sidecar and released when the method returns or
 * throws), as {@link io.github.seeda88e5317.resilience.ResilienceClient#withLock} does.
 *
 * <pre>{@code
 * @WithLock(key = "'stock/' + #sku", waitTimeout = "5s")
 * public void reserve(String sku, int units) {
 *   long token = CurrentLock.lease().orElseThrow().fencingToken();
 *   stock.reserve(sku, units, token); // the store refuses tokens lower than it has seen
 * }
 * }</pre>
 *
 * <ul>
 *   <li>{@link #key} is a SpEL expression over the arguments, as for {@link Idempotent#key}.
 *   <li>The lock not acquired within {@link #waitTimeout} (default 0: try once): {@link
 *       io.github.seeda88e5317.resilience.NotAcquiredException}; the method does not run.
 *   <li>The lease lost while the method ran and the method returned normally: {@link
 *       io.github.seeda88e5317.resilience.LeaseLostException} (the method may have run without
 *       exclusion). {@link CurrentLock#cancellation()} tells the method when the lease is lost.
 *   <li>Inside the method, {@link CurrentLock#lease()} gives the lease and its fencing token.
 * </ul>
 *
 * With {@code @Transactional} on the same method, the lock is taken before the transaction starts
 * and released after it commits. Applies to calls through the Spring proxy only.
 */
@Target(ElementType.METHOD)
@Retention(RetentionPolicy.RUNTIME)
@Documented
public @interface WithLock {

  /** SpEL expression over the arguments giving the lock key, e.g. {@code "'orders/' + #id"}. */
  String key();

  /** The lease TTL (100ms-24h); the sidecar renews it while the method runs. */
  String ttl() default "10s";

  /** How long to wait for the lock; 0 tries once. */
  String waitTimeout() default "0s";

  /** The owner recorded with the lock (shown to others); empty: the client's default. */
  String owner() default "";

  /** The longest the lock may be held (100ms-24h); 0: no limit. */
  String maxHold() default "0s";
}
