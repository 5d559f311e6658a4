package io.github.seeda88e5317.resilience;

/**
 * The critical section given to {@link ResilienceClient#withLock}. It runs while the lock is held
 * and should stop writing as soon as {@code cancelled} says the lease was lost.
 *
 * @param <T> what it returns
 * @param <E> the checked exception it may throw ({@code RuntimeException} when none)
 */
@FunctionalInterface
public interface LockedCallable<T, E extends Exception> {
  T call(Lease lease, Cancellation cancelled) throws E;
}
