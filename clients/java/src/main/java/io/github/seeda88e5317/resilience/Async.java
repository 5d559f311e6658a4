package io.github.seeda88e5317.resilience;

import com.google.common.util.concurrent.ListenableFuture;
import io.grpc.Status;
import java.time.Duration;
import java.util.concurrent.Callable;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

/** Plumbing of the CompletableFuture variants of the helpers. */
final class Async {
  private Async() {}

  /**
   * A gRPC future as a CompletableFuture whose failures are typed {@link SidecarException}s.
   * Cancelling the result cancels the call.
   */
  static <T> CompletableFuture<T> unary(ListenableFuture<T> call) {
    CompletableFuture<T> f = new CompletableFuture<>();
    call.addListener(
        () -> {
          try {
            f.complete(call.get());
          } catch (ExecutionException e) {
            f.completeExceptionally(SidecarException.from(e.getCause()));
          } catch (CancellationException e) {
            f.cancel(false);
          } catch (InterruptedException e) { // cannot happen: the future is done
            Thread.currentThread().interrupt();
            f.completeExceptionally(SidecarException.from(e));
          }
        },
        Runnable::run);
    f.whenComplete(
        (v, e) -> {
          if (f.isCancelled()) {
            call.cancel(true);
          }
        });
    return f;
  }

  /** A future completed after {@code delay} on {@code scheduler}. */
  static CompletableFuture<Void> delay(ScheduledExecutorService scheduler, Duration delay) {
    CompletableFuture<Void> f = new CompletableFuture<>();
    try {
      scheduler.schedule(() -> f.complete(null), delay.toNanos(), TimeUnit.NANOSECONDS);
    } catch (RejectedExecutionException e) {
      f.completeExceptionally(
          SidecarException.from(
              Status.CANCELLED.withDescription("the client is closed").asRuntimeException()));
    }
    return f;
  }

  /**
   * Calls {@code call}, retrying UNAVAILABLE up to {@code retries} times after the sidecar's
   * RetryInfo delay (100 ms when none), as {@link ResilienceClient#retryUnavailable} does.
   */
  static <T> CompletableFuture<T> retryUnavailable(
      ScheduledExecutorService scheduler,
      Executor context,
      int retries,
      Supplier<CompletableFuture<T>> call) {
    CompletableFuture<T> result = new CompletableFuture<>();
    call.get()
        .whenCompleteAsync(
            (v, e) -> {
              if (e == null) {
                result.complete(v);
                return;
              }
              SidecarException se = SidecarException.from(unwrap(e));
              if (se.code() != Status.Code.UNAVAILABLE || retries <= 0) {
                result.completeExceptionally(se);
                return;
              }
              Duration d = se.retryDelay().isZero() ? Duration.ofMillis(100) : se.retryDelay();
              delay(scheduler, d)
                  .thenComposeAsync(
                      x -> retryUnavailable(scheduler, context, retries - 1, call), context)
                  .whenComplete(
                      (v2, e2) -> {
                        if (e2 == null) {
                          result.complete(v2);
                        } else {
                          result.completeExceptionally(unwrap(e2));
                        }
                      });
            },
            context);
    return result;
  }

  /** Runs {@code stage}, turning an exception it throws into a failed future. */
  static <T> CompletableFuture<T> call(Callable<? extends CompletionStage<T>> stage) {
    try {
      CompletionStage<T> s = stage.call();
      if (s == null) {
        return CompletableFuture.failedFuture(
            new NullPointerException("the async function returned null instead of a stage"));
      }
      return s.toCompletableFuture();
    } catch (Throwable t) {
      return CompletableFuture.failedFuture(t);
    }
  }

  /** The exception inside CompletionException/ExecutionException wrappers. */
  static Throwable unwrap(Throwable t) {
    while ((t instanceof CompletionException || t instanceof ExecutionException)
        && t.getCause() != null) {
      t = t.getCause();
    }
    return t;
  }

  /**
   * Waits for {@code f}, a call to the sidecar bounded by its deadline, and rethrows its failure.
   * An interrupt cancels it ({@code CANCELLED}, the interrupt flag kept), as a blocking stub does.
   */
  static <T> T await(CompletableFuture<T> f) {
    try {
      return f.get();
    } catch (InterruptedException e) {
      f.cancel(true);
      Thread.currentThread().interrupt();
      throw SidecarException.from(
          Status.CANCELLED.withDescription("interrupted").withCause(e).asRuntimeException());
    } catch (ExecutionException e) {
      throw Async.<RuntimeException>sneaky(unwrap(e));
    }
  }

  @SuppressWarnings("unchecked")
  static <E extends Throwable> E sneaky(Throwable t) throws E {
    throw (E) t;
  }
}
