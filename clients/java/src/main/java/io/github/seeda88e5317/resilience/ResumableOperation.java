package io.github.seeda88e5317.resilience;

/**
 * An operation of several phases run at most once per idempotency key by {@link
 * ResilienceClient#idempotent}: it sees its {@link Execution} (attempt number, the last checkpoint
 * of an earlier attempt that died) and records checkpoints with {@link Execution#checkpoint}.
 *
 * @param <E> the checked exception it may throw ({@code RuntimeException} when none)
 */
@FunctionalInterface
public interface ResumableOperation<E extends Exception> {
  IdempotentResult run(Execution execution) throws E;
}
