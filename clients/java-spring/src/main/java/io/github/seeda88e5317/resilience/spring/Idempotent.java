package io.github.seeda88e5317.resilience.spring;

import java.lang.annotation.Documented;
import java.lang.annotation.ElementType;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;

/**
 * Makes a Spring bean's method run at most once per key across every instance of the application
 * sharing the sidecar's store (as AWS Powertools' {@code @Idempotent}): the first call runs it and
 * stores its return value (as JSON); a later call with the same key returns the stored value
 * without running it, even from another process.
 *
 * <pre>{@code
 * @Idempotent(key = "#request.orderId")
 * public Receipt charge(ChargeRequest request) { ... }
 * }</pre>
 *
 * <ul>
 *   <li>{@link #key} is a SpEL expression over the method's arguments ({@code #name}, or {@code
 *       #p0}/{@code #a0}; parameter names need {@code -parameters}, which Spring Boot's build
 *       plugins set), as {@code @Cacheable}'s key; {@code @beanName} reaches beans. It must not
 *       evaluate to null. The store key is {@code <name>:<key>}.
 *   <li>A call while another call with the key runs waits for it (at most {@link #maxWait}, then
 *       {@link io.github.seeda88e5317.resilience.IdempotencyInProgressException}) and returns its
 *       result.
 *   <li>A method that throws stores nothing: the key is released, the exception propagates, and
 *       the next call runs the method again.
 *   <li>With {@link #fingerprint}, a key reused with a different fingerprint throws {@link
 *       io.github.seeda88e5317.resilience.IdempotencyKeyMismatchException} without running.
 *   <li>The return type must be serializable to JSON and back by the application's Jackson {@code
 *       ObjectMapper} (void methods store nothing but the fact that they ran); methods returning a
 *       {@code CompletionStage} are refused.
 * </ul>
 *
 * Applies to calls through the Spring proxy (not to calls from within the same class), like every
 * Spring AOP annotation. Durations are Spring Boot durations ({@code "30s"}, {@code "PT30S"}) and
 * may be property placeholders ({@code "${orders.lease:30s}"}).
 */
@Target(ElementType.METHOD)
@Retention(RetentionPolicy.RUNTIME)
@Documented
public @interface Idempotent {

  /** SpEL expression over the arguments giving the idempotency key, e.g. {@code "#order.id"}. */
  String key();

  /**
   * The key's namespace; the store key is {@code name + ":" + key}. Default: the declaring class's
   * simple name, ".", the method name.
   */
  String name() default "";

  /**
   * Optional SpEL expression whose value (its {@code toString()}) identifies the request, so that
   * a key reused for a different request is refused (Powertools' payload validation). Empty: no
   * check.
   */
  String fingerprint() default "";

  /** How long a running call owns the key; a call running longer may be run again by a retry. */
  String leaseTtl() default "30s";

  /** How long the result is kept and returned to duplicates. */
  String retention() default "24h";

  /** How long a duplicate waits for a running call before it gives up. */
  String maxWait() default "60s";
}
