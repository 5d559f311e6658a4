package io.github.seeda88e5317.resilience.spring;

import jakarta.servlet.http.HttpServletRequest;

/**
 * Chooses the scope of a request's Idempotency-Key: the store key is {@code scope + ":" + key}, so
 * that two tenants (or users) sending the same key never share a stored response. Declare one as
 * a bean to replace {@code resilience.sidecar.idempotency.scope}:
 *
 * <pre>{@code
 * @Bean
 * IdempotencyScopeResolver perTenant() {
 *   return request -> "tenant-" + request.getHeader("X-Tenant-Id");
 * }
 * }</pre>
 *
 * The resolver runs for every covered request that carries the header, after the key was
 * validated and before the sidecar is asked. It must return a non-empty string; throwing fails
 * the request (the handler does not run).
 */
@FunctionalInterface
public interface IdempotencyScopeResolver {
  String scope(HttpServletRequest request);
}
