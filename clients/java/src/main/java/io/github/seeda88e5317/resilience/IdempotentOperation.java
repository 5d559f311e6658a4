package io.github.seeda88e5317.resilience;

/**
 * An operation run at most once per idempotency key by {@link ResilienceClient#idempotent}.
 *
 * @param <E> the checked exception it may throw ({@code RuntimeException} when none)
 */
@FunctionalInterface
public interface IdempotentOperation<E extends Exception> {
  IdempotentResult run() throws E;
}
