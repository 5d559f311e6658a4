package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.AbortSagaRequest;
import io.github.seeda88e5317.resilience.v1.CompleteSagaRequest;
import io.github.seeda88e5317.resilience.v1.GetSagaRequest;
import io.github.seeda88e5317.resilience.v1.RecordStepRequest;
import io.github.seeda88e5317.resilience.v1.SagaState;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executor;
import java.util.function.Supplier;

/**
 * A saga this process orchestrates through the sidecar's SagaService, in the manner of Temporal's
 * {@code Saga}: each step's compensation is recorded <i>before</i> the step runs (write-ahead), and
 * when a step fails the saga is aborted: the sidecar runs the recorded compensations newest first
 * (HTTP calls to upstreams of its config, each with {@code Idempotency-Key: <saga_id>:<step>}). If
 * this process dies instead, the sidecar compensates the saga after its timeout.
 *
 * <pre>{@code
 * Saga saga = client.startSaga("order-42", "place-order");
 * String hold = saga.step("reserve", SagaCompensation.post("inventory", "/holds/42/cancel"),
 *     () -> inventory.reserve(42));              // recorded, run; a failure aborts the saga
 * saga.addCompensation("notify", SagaCompensation.post("mail", "/retractions/42"));
 * mail.send(order);                              // a step recorded with addCompensation
 * saga.complete();                               // nothing is compensated
 * }</pre>
 *
 * <p>or, with the saga completed on return and aborted on an exception, {@link
 * ResilienceClient#saga(String, String, SagaOptions, ResilienceClient.SagaBody)}. Steps run one at a
 * time: a Saga is not meant for concurrent use. Errors are {@link SidecarException}s: {@link
 * SagaStateConflictException} when the saga's state forbids the call (it timed out or was aborted:
 * do not run the step), {@link UpstreamUnknownException} for a compensation naming an unknown
 * upstream.
 */
public final class Saga {
  /** How long to wait between polls in {@link #awaitEnd}. */
  private static final Duration POLL = Duration.ofMillis(100);

  private final ResilienceClient client;
  private final String id;
  private final String name;

  Saga(ResilienceClient client, String id, String name) {
    this.client = client;
    this.id = id;
    this.name = name;
  }

  /** The saga's id. */
  public String id() {
    return id;
  }

  /** The saga's name (its kind, e.g. "place-order"). */
  public String name() {
    return name;
  }

  /**
   * Records {@code step} with its compensation, before the caller performs the step (Temporal's
   * {@code addCompensation}, made durable). Recording the same step with the same compensation
   * again is a no-op.
   *
   * @return the step's position in the saga, from 1
   * @throws SagaStateConflictException the saga is no longer running: do not perform the step
   */
  public int addCompensation(String step, SagaCompensation compensation) {
    return Async.await(addCompensationAsync(step, compensation));
  }

  /** {@link #addCompensation} without blocking. */
  public CompletableFuture<Integer> addCompensationAsync(
      String step, SagaCompensation compensation) {
    Objects.requireNonNull(step, "step");
    Objects.requireNonNull(compensation, "compensation");
    return Async.unary(
            client
                .sagasFuture()
                .recordStep(
                    RecordStepRequest.newBuilder()
                        .setSagaId(id)
                        .setStep(step)
                        .setCompensation(compensation.toProto())
                        .build()))
        .thenApply(r -> r.getIndex());
  }

  /**
   * Records {@code step} with its compensation, then runs {@code action} and returns its result.
   * When {@code action} throws, the saga is aborted (the sidecar compensates every recorded step,
   * this one included: it may have done part of its work) and the exception is rethrown, with a
   * failed abort attached as suppressed. When the step cannot be recorded, {@code action} does not
   * run.
   */
  public <T, E extends Exception> T step(
      String step, SagaCompensation compensation, BreakerGuard.CheckedSupplier<T, E> action)
      throws E {
    Objects.requireNonNull(action, "action");
    addCompensation(step, compensation);
    try {
      return action.get();
    } catch (Throwable t) {
      try {
        ResilienceClient.uninterrupted(
            () -> {
              abort(failureReason(step, t));
              return null;
            });
      } catch (RuntimeException e) {
        t.addSuppressed(e);
      }
      throw t;
    }
  }

  /**
   * {@link #step} of an asynchronous action: recorded without blocking, then {@code action}'s
   * stage; when it fails, the saga is aborted and the future fails as the stage did.
   */
  public <T> CompletableFuture<T> stepAsync(
      String step, SagaCompensation compensation, Supplier<? extends CompletionStage<T>> action) {
    Objects.requireNonNull(action, "action");
    Executor ctx = Tracing.currentContextExecutor();
    return addCompensationAsync(step, compensation)
        .thenComposeAsync(
            index ->
                Async.call(action::get)
                    .handle(
                        (v, e) ->
                            e == null
                                ? BreakerGuard.Result.<T>ok(v)
                                : BreakerGuard.Result.<T>failed(e))
                    .thenComposeAsync(
                        r -> {
                          if (r.error() == null) {
                            return CompletableFuture.completedFuture(r.value());
                          }
                          Throwable t = Async.unwrap(r.error());
                          return abortAsync(failureReason(step, t))
                              .handle(
                                  (x, ae) -> {
                                    if (ae != null) {
                                      t.addSuppressed(Async.unwrap(ae));
                                    }
                                    return r.get();
                                  });
                        },
                        ctx),
            ctx);
  }

  /**
   * Ends the saga successfully: nothing is compensated.
   *
   * @throws SagaStateConflictException it timed out or was aborted meanwhile, and is being (or
   *     was) compensated
   */
  public void complete() {
    Async.await(completeAsync());
  }

  /** {@link #complete()} without blocking. */
  public CompletableFuture<Void> completeAsync() {
    return Async.unary(
            client.sagasFuture().completeSaga(CompleteSagaRequest.newBuilder().setSagaId(id).build()))
        .thenApply(r -> null);
  }

  /**
   * Aborts the saga: the sidecar compensates the recorded steps, newest first, in the background
   * ({@link #get()} and {@link #awaitEnd} show the progress). {@code reason} is kept in the saga
   * log (control characters replaced, cut to 512 bytes). Idempotent on a saga already compensating
   * or compensated.
   *
   * @throws SagaStateConflictException the saga was completed
   */
  public void abort(String reason) {
    Async.await(abortAsync(reason));
  }

  /** Temporal's name for {@link #abort}: compensate the recorded steps, newest first. */
  public void compensate(String reason) {
    abort(reason);
  }

  /** {@link #abort} without blocking. */
  public CompletableFuture<Void> abortAsync(String reason) {
    return Async.unary(
            client
                .sagasFuture()
                .abortSaga(
                    AbortSagaRequest.newBuilder()
                        .setSagaId(id)
                        .setReason(cleanReason(Objects.requireNonNull(reason, "reason")))
                        .build()))
        .thenApply(r -> null);
  }

  /** The saga as the sidecar's log has it, with its steps and their compensations' status. */
  public io.github.seeda88e5317.resilience.v1.Saga get() {
    return Async.await(
        Async.unary(
                client.sagasFuture().getSaga(GetSagaRequest.newBuilder().setSagaId(id).build()))
            .thenApply(r -> r.getSaga()));
  }

  /**
   * Polls the saga until it ends (COMPLETED, COMPENSATED or COMPENSATION_FAILED) or {@code
   * timeout} passes, and returns the last state seen (check {@code getState()}: it may still be
   * COMPENSATING).
   */
  public io.github.seeda88e5317.resilience.v1.Saga awaitEnd(Duration timeout) {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (true) {
      io.github.seeda88e5317.resilience.v1.Saga s = get();
      if (isEnd(s.getState()) || System.nanoTime() - deadline >= 0) {
        return s;
      }
      try {
        Thread.sleep(POLL.toMillis()); // real time: the compensations run in the sidecar
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return s;
      }
    }
  }

  static boolean isEnd(SagaState s) {
    return s == SagaState.SAGA_STATE_COMPLETED
        || s == SagaState.SAGA_STATE_COMPENSATED
        || s == SagaState.SAGA_STATE_COMPENSATION_FAILED;
  }

  static String failureReason(String step, Throwable t) {
    return "step \"" + step + "\" failed: " + t;
  }

  /** Valid for the sidecar: no control characters, at most 512 bytes of UTF-8. */
  static String cleanReason(String reason) {
    StringBuilder b = new StringBuilder(reason.length());
    int bytes = 0;
    for (int i = 0; i < reason.length(); ) {
      int cp = reason.codePointAt(i);
      i += Character.charCount(cp);
      if (Character.isISOControl(cp) || Character.isSurrogate((char) cp) && cp < 0x10000) {
        cp = ' ';
      }
      String s = new String(Character.toChars(cp));
      int n = s.getBytes(StandardCharsets.UTF_8).length;
      if (bytes + n > 512) {
        break;
      }
      bytes += n;
      b.append(s);
    }
    return b.toString();
  }

  @Override
  public String toString() {
    return "Saga{" + id + " (" + name + ")}";
  }
}
