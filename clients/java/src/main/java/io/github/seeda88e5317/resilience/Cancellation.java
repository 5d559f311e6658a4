package io.github.seeda88e5317.resilience;

import java.util.Objects;
import java.util.concurrent.CompletableFuture;

/**
 * Tells a critical section that its lease was lost, the way a cancelled context does in Go: check
 * {@link #isCancelled()} (or call {@link #throwIfCancelled()}) between writes, or register a
 * callback with {@link #onCancel(Runnable)}, e.g. to interrupt the working thread:
 *
 * <pre>{@code
 * client.withLock("jobs/nightly", LockOptions.defaults(), (lease, cancelled) -> {
 *   Thread worker = Thread.currentThread();
 *   cancelled.onCancel(worker::interrupt);
 *   ...
 * });
 * }</pre>
 *
 * Callbacks run on a gRPC or timer thread; keep them short.
 */
public final class Cancellation {
  private final CompletableFuture<LeaseLostException> lost;

  Cancellation(CompletableFuture<LeaseLostException> lost) {
    this.lost = lost;
  }

  /** Whether the lease was lost. */
  public boolean isCancelled() {
    return lost.isDone();
  }

  /** Throws the {@link LeaseLostException} if the lease was lost. */
  public void throwIfCancelled() {
    LeaseLostException e = lost.getNow(null);
    if (e != null) {
      throw e;
    }
  }

  /** Runs {@code action} once when the lease is lost (at once if it already was). */
  public void onCancel(Runnable action) {
    Objects.requireNonNull(action, "action");
    lost.thenRun(action);
  }

  /** Completes with the cause when the lease is lost; never completes otherwise. */
  public CompletableFuture<LeaseLostException> future() {
    return lost.thenApply(e -> e);
  }
}
