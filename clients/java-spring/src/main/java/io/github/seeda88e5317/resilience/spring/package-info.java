/**
 * Spring Boot starter of the resilience sidecar: {@link
 * io.github.seeda88e5317.resilience.spring.ResilienceSidecarAutoConfiguration} (a client from
 * {@code resilience.sidecar.*}), the {@link
 * io.github.seeda88e5317.resilience.spring.IdempotencyKeyFilter} for the {@code Idempotency-Key}
 * header, and the {@link io.github.seeda88e5317.resilience.spring.Idempotent} and {@link
 * io.github.seeda88e5317.resilience.spring.WithLock} method annotations.
 */
package io.github.seeda88e5317.resilience.spring;
