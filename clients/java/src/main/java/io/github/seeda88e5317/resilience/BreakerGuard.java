package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.AllowCallRequest;
import io.github.seeda88e5317.resilience.v1.AllowCallResponse;
import io.github.seeda88e5317.resilience.v1.BreakerState;
import io.github.seeda88e5317.resilience.v1.CallOutcome;
import io.github.seeda88e5317.resilience.v1.ReportCallRequest;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Supplier;

/**
 * The sidecar's circuit breaker around any function, as resilience4j's {@code CircuitBreaker}
 * decorates one: each call asks the breaker for a permit ({@code AllowCall}), runs the function if
 * allowed, and reports its outcome and duration ({@code ReportCall}). Get one from {@link
 * ResilienceClient#breaker(String, BreakerOptions)}:
 *
 * <pre>{@code
 * BreakerGuard payments = client.breaker("payments");
 * Supplier<Receipt> charge = payments.decorateSupplier(() -> provider.charge(order));
 * try {
 *   Receipt r = charge.get();
 * } catch (BreakerOpenException e) {
 *   retryLater(e.retryDelay());          // the breaker is open: the provider was not called
 * }
 * }</pre>
 *
 * <p>Outcomes: returning is a success; an exception is a failure, except those of {@link
 * BreakerOptions#ignoreExceptions} and interruptions or cancellations, which are ignored (not the
 * dependency's fault). The exception is rethrown as it is. When the breaker refuses (open, or
 * half-open with its probe slots taken) the function does not run and {@link BreakerOpenException}
 * carries the retry delay. A failed report does not change the result: the function already ran,
 * and an unreported permit counts as a failure when it expires.
 *
 * <p>The two steps are also available on their own: {@link #acquirePermit()} and {@link
 * Permit#onSuccess()}/{@link Permit#onFailure()}/{@link Permit#onIgnored()}. Thread-safe.
 */
public final class BreakerGuard {
  private static final System.Logger LOG = System.getLogger("io.github.seeda88e5317.resilience");

  /** How long a report may take; it is sent even after the caller was interrupted. */
  static final Duration REPORT_TIMEOUT = Duration.ofSeconds(5);

  private final ResilienceClient client;
  private final String name;
  private final BreakerOptions options;

  BreakerGuard(ResilienceClient client, String name, BreakerOptions options) {
    this.client = client;
    this.name = Objects.requireNonNull(name, "name");
    this.options = Objects.requireNonNull(options, "options");
  }

  /** The breaker's name. */
  public String name() {
    return name;
  }

  /** An allowed call: report its outcome once. */
  public final class Permit {
    private final String id;
    private final long startNanos = System.nanoTime();
    private final BreakerState state;
    private final AtomicBoolean reported = new AtomicBoolean();

    private Permit(String id, BreakerState state) {
      this.id = id;
      this.state = state;
    }

    /** The permit id the sidecar issued. */
    public String id() {
      return id;
    }

    /** The state the call was allowed in (CLOSED, or HALF_OPEN for a probe). */
    public BreakerState state() {
      return state;
    }

    /** Reports a success (counted toward closing a half-open breaker). */
    public void onSuccess() {
      report(CallOutcome.CALL_OUTCOME_SUCCESS);
    }

    /** Reports a failure (counted toward opening the breaker). */
    public void onFailure() {
      report(CallOutcome.CALL_OUTCOME_FAILURE);
    }

    /** Reports that the outcome says nothing about the dependency: nothing is counted. */
    public void onIgnored() {
      report(CallOutcome.CALL_OUTCOME_IGNORED);
    }

    /**
     * Reports {@code outcome} with the time since the permit was granted. Only the first report
     * counts; a report that fails is logged (DEBUG) and dropped.
     */
    public void report(CallOutcome outcome) {
      Async.await(reportAsync(outcome).exceptionally(e -> null));
    }

    CompletableFuture<Void> reportAsync(CallOutcome outcome) {
      if (!reported.compareAndSet(false, true)) {
        return CompletableFuture.completedFuture(null);
      }
      ReportCallRequest req =
          ReportCallRequest.newBuilder()
              .setPermitId(id)
              .setOutcome(outcome)
              .setDuration(Protos.duration(Duration.ofNanos(System.nanoTime() - startNanos)))
              .build();
      return Async.unary(
              client
                  .breakersFuture()
                  .withDeadlineAfter(REPORT_TIMEOUT.toNanos(), TimeUnit.NANOSECONDS)
                  .reportCall(req))
          .handle(
              (r, e) -> {
                if (e != null) {
                  LOG.log(
                      System.Logger.Level.DEBUG,
                      "breaker \"" + name + "\": report of permit dropped: " + Async.unwrap(e));
                }
                return null;
              });
    }
  }

  /**
   * Asks the breaker for a permit.
   *
   * @throws BreakerOpenException the breaker refused: the call must not be made
   * @throws SidecarException the sidecar could not answer
   */
  public Permit acquirePermit() {
    return Async.await(acquirePermitAsync());
  }

  /** {@link #acquirePermit()} without blocking. */
  public CompletableFuture<Permit> acquirePermitAsync() {
    AllowCallRequest.Builder req = AllowCallRequest.newBuilder().setBreaker(name);
    if (options.permitTtl() != null) {
      req.setPermitTtl(Protos.duration(options.permitTtl()));
    }
    return Async.unary(client.breakersFuture().allowCall(req.build())).thenApply(this::permitOf);
  }

  private Permit permitOf(AllowCallResponse r) {
    if (!r.getAllowed()) {
      String state = r.getState() == BreakerState.BREAKER_STATE_HALF_OPEN ? "half-open" : "open";
      throw BreakerOpenException.refused(name, state, Protos.duration(r.getRetryAfter()));
    }
    return new Permit(r.getPermitId(), r.getState());
  }

  /** The outcome of {@code t}: ignored or failure. */
  private CallOutcome outcomeOf(Throwable t) {
    if (t instanceof InterruptedException
        || t instanceof CancellationException
        || options.ignores(t)) {
      return CallOutcome.CALL_OUTCOME_IGNORED;
    }
    return CallOutcome.CALL_OUTCOME_FAILURE;
  }

  /**
   * Runs {@code fn} under the breaker and returns its result (see the class comment).
   *
   * @throws BreakerOpenException the breaker refused; {@code fn} did not run
   * @throws E what {@code fn} throws, after its failure was reported
   */
  public <T, E extends Exception> T execute(CheckedSupplier<T, E> fn) throws E {
    Objects.requireNonNull(fn, "fn");
    Permit permit = acquirePermit();
    T result;
    try {
      result = fn.get();
    } catch (Throwable t) {
      reportUninterrupted(permit, outcomeOf(t));
      throw t;
    }
    reportUninterrupted(permit, CallOutcome.CALL_OUTCOME_SUCCESS);
    return result;
  }

  private static void reportUninterrupted(Permit permit, CallOutcome outcome) {
    ResilienceClient.uninterrupted(
        () -> {
          permit.report(outcome);
          return null;
        });
  }

  /** {@link #execute} of a {@link Supplier}. */
  public <T> T executeSupplier(Supplier<T> fn) {
    Objects.requireNonNull(fn, "fn");
    return execute(fn::get);
  }

  /** {@link #execute} of a {@link Callable}. */
  public <T> T executeCallable(Callable<T> fn) throws Exception {
    Objects.requireNonNull(fn, "fn");
    return execute(fn::call);
  }

  /** {@link #execute} of a {@link Runnable}. */
  public void executeRunnable(Runnable fn) {
    Objects.requireNonNull(fn, "fn");
    execute(
        () -> {
          fn.run();
          return null;
        });
  }

  /** A supplier that runs {@code fn} under the breaker on each {@code get()}. */
  public <T> Supplier<T> decorateSupplier(Supplier<T> fn) {
    Objects.requireNonNull(fn, "fn");
    return () -> executeSupplier(fn);
  }

  /** A callable that runs {@code fn} under the breaker on each {@code call()}. */
  public <T> Callable<T> decorateCallable(Callable<T> fn) {
    Objects.requireNonNull(fn, "fn");
    return () -> executeCallable(fn);
  }

  /** A runnable that runs {@code fn} under the breaker on each {@code run()}. */
  public Runnable decorateRunnable(Runnable fn) {
    Objects.requireNonNull(fn, "fn");
    return () -> executeRunnable(fn);
  }

  /**
   * Runs the asynchronous {@code fn} under the breaker: the permit is asked without blocking, and
   * the outcome reported when {@code fn}'s stage completes. The future fails with {@link
   * BreakerOpenException} when the breaker refused ({@code fn} not called), or as {@code fn}'s
   * stage failed.
   */
  public <T> CompletableFuture<T> executeAsync(Supplier<? extends CompletionStage<T>> fn) {
    Objects.requireNonNull(fn, "fn");
    Executor ctx = Tracing.currentContextExecutor();
    return acquirePermitAsync()
        .thenComposeAsync(
            permit ->
                Async.call(fn::get)
                    .handle((v, e) -> e == null ? Result.<T>ok(v) : Result.<T>failed(e))
                    .thenComposeAsync(
                        r ->
                            permit
                                .reportAsync(
                                    r.error == null
                                        ? CallOutcome.CALL_OUTCOME_SUCCESS
                                        : outcomeOf(Async.unwrap(r.error)))
                                .thenApply(x -> r.get()),
                        ctx),
            ctx);
  }

  /** A supplier of stages that runs {@code fn} under the breaker each time (resilience4j's name). */
  public <T> Supplier<CompletableFuture<T>> decorateCompletionStage(
      Supplier<? extends CompletionStage<T>> fn) {
    Objects.requireNonNull(fn, "fn");
    return () -> executeAsync(fn);
  }

  /** A value or a failure, carried through a stage. */
  record Result<T>(T value, Throwable error) {
    static <T> Result<T> ok(T v) {
      return new Result<>(v, null);
    }

    static <T> Result<T> failed(Throwable e) {
      return new Result<>(null, e);
    }

    T get() {
      if (error != null) {
        throw error instanceof CompletionException c ? c : new CompletionException(error);
      }
      return value;
    }
  }

  /** A function that returns a value and may throw {@code E}. */
  @FunctionalInterface
  public interface CheckedSupplier<T, E extends Exception> {
    T get() throws E;
  }

  @Override
  public String toString() {
    return "BreakerGuard{" + name + "}";
  }
}
