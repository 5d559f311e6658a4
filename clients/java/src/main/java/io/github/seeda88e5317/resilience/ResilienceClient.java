package io.github.seeda88e5317.resilience;

import com.google.protobuf.ByteString;
import io.github.seeda88e5317.resilience.v1.AckRequest;
import io.github.seeda88e5317.resilience.v1.BreakerServiceGrpc;
import io.github.seeda88e5317.resilience.v1.CheckOrRecordIdempotencyRequest;
import io.github.seeda88e5317.resilience.v1.CheckOrRecordIdempotencyResponse;
import io.github.seeda88e5317.resilience.v1.ClockServiceGrpc;
import io.github.seeda88e5317.resilience.v1.CompleteIdempotencyRequest;
import io.github.seeda88e5317.resilience.v1.EventServiceGrpc;
import io.github.seeda88e5317.resilience.v1.GetOutboxStatusRequest;
import io.github.seeda88e5317.resilience.v1.GetOutboxStatusResponse;
import io.github.seeda88e5317.resilience.v1.IdempotencyResult;
import io.github.seeda88e5317.resilience.v1.IdempotencyServiceGrpc;
import io.github.seeda88e5317.resilience.v1.LockServiceGrpc;
import io.github.seeda88e5317.resilience.v1.NackRequest;
import io.github.seeda88e5317.resilience.v1.PublishRequest;
import io.github.seeda88e5317.resilience.v1.PublishResponse;
import io.github.seeda88e5317.resilience.v1.RateLimitServiceGrpc;
import io.github.seeda88e5317.resilience.v1.ReleaseIdempotencyRequest;
import io.github.seeda88e5317.resilience.v1.SagaServiceGrpc;
import io.github.seeda88e5317.resilience.v1.SemaphoreServiceGrpc;
import io.github.seeda88e5317.resilience.v1.StartSagaRequest;
import io.github.seeda88e5317.resilience.v1.SubscribeRequest;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executor;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

/**
 * A connection to the resilience sidecar: the generated stubs of every service, and helpers built
 * on them: locks ({@link #withLock}, {@link #holdLock}, the explicit {@link #lock} handle), {@link
 * #idempotent}, circuit breakers ({@link #breaker}, {@link #executeCall}), sagas ({@link
 * #startSaga}, {@link #saga}), {@link #lamportClock}, {@link #publish} and {@link #subscribe}; most
 * with a {@code CompletableFuture} variant ({@code ...Async}).
 *
 * <pre>{@code
 * try (ResilienceClient client = ResilienceClient.create()) {
 *   client.withLock("orders/42", LockOptions.defaults(), (lease, cancelled) -> {
 *     db.update(order, lease.fencingToken());
 *     return null;
 *   });
 * }
 * }</pre>
 *
 * <p>{@link #create()} reads the address from {@code SIDECAR_ADDR} ({@code host:port} or {@code
 * unix:///path}; default {@value #DEFAULT_ADDR}) and the API token from {@code SIDECAR_API_TOKEN}
 * or the file named by {@code SIDECAR_API_TOKEN_FILE}. The sidecar listens on localhost, so the
 * transport is plaintext. Every unary call without a deadline of its own gets {@link
 * #DEFAULT_CALL_TIMEOUT}, so a stopped sidecar is an error, not a hang. A sidecar that restarts is
 * reconnected to within {@link #DEFAULT_MAX_RECONNECT_BACKOFF}. When the OpenTelemetry API is on
 * the class path, every call carries the current trace context ({@code traceparent}).
 *
 * <p>The stubs throw {@link StatusRuntimeException}; {@link SidecarException#from(Throwable)}
 * decodes it into the typed exception of its reason. The helpers throw the typed exceptions
 * directly. A client is thread-safe; make one per process and close it at exit.
 */
public final class ResilienceClient implements AutoCloseable {
  /** The sidecar address: {@code host:port} or {@code unix:///path}. */
  public static final String ENV_ADDR = "SIDECAR_ADDR";

  /** The API token. */
  public static final String ENV_TOKEN = "SIDECAR_API_TOKEN";

  /** A file holding the API token (read when the client is built; used when ENV_TOKEN is unset). */
  public static final String ENV_TOKEN_FILE = "SIDECAR_API_TOKEN_FILE";

  /** The sidecar's default listen address. */
  public static final String DEFAULT_ADDR = "127.0.0.1:50051";

  /** The deadline given to every unary call that has none. */
  public static final Duration DEFAULT_CALL_TIMEOUT = Duration.ofSeconds(10);

  /** The longest pause between reconnect attempts ({@link Builder#maxReconnectBackoff}). */
  public static final Duration DEFAULT_MAX_RECONNECT_BACKOFF = Duration.ofMillis(500);

  /**
   * How long a call made while the sidecar is unreachable waits for the connection ({@link
   * Builder#connectWait}).
   */
  public static final Duration DEFAULT_CONNECT_WAIT = Duration.ofSeconds(2);

  private final ManagedChannel channel;
  private final String address;
  private final Duration callTimeout;
  private final ScheduledThreadPoolExecutor scheduler;

  private final LockServiceGrpc.LockServiceBlockingStub locks;
  private final LockServiceGrpc.LockServiceStub locksAsync;
  private final IdempotencyServiceGrpc.IdempotencyServiceBlockingStub idempotency;
  private final IdempotencyServiceGrpc.IdempotencyServiceStub idempotencyAsync;
  private final ClockServiceGrpc.ClockServiceBlockingStub clocks;
  private final ClockServiceGrpc.ClockServiceStub clocksAsync;
  private final BreakerServiceGrpc.BreakerServiceBlockingStub breakers;
  private final BreakerServiceGrpc.BreakerServiceStub breakersAsync;
  private final SagaServiceGrpc.SagaServiceBlockingStub sagas;
  private final SagaServiceGrpc.SagaServiceStub sagasAsync;
  private final EventServiceGrpc.EventServiceBlockingStub events;
  private final EventServiceGrpc.EventServiceStub eventsAsync;
  private final RateLimitServiceGrpc.RateLimitServiceBlockingStub rateLimits;
  private final SemaphoreServiceGrpc.SemaphoreServiceBlockingStub semaphores;
  private final SemaphoreServiceGrpc.SemaphoreServiceStub semaphoresAsync;
  private final LockServiceGrpc.LockServiceFutureStub locksFuture;
  private final IdempotencyServiceGrpc.IdempotencyServiceFutureStub idempotencyFuture;
  private final ClockServiceGrpc.ClockServiceFutureStub clocksFuture;
  private final BreakerServiceGrpc.BreakerServiceFutureStub breakersFuture;
  private final SagaServiceGrpc.SagaServiceFutureStub sagasFuture;
  private final EventServiceGrpc.EventServiceFutureStub eventsFuture;

  private ResilienceClient(
      ManagedChannel channel,
      String address,
      Duration callTimeout,
      Duration maxReconnectBackoff,
      AwaitConnection awaitConnection) {
    this.channel = channel;
    this.address = address;
    this.callTimeout = callTimeout;
    this.scheduler =
        new ScheduledThreadPoolExecutor(
            1,
            r -> {
              Thread t = new Thread(r, "resilience-client-timer");
              t.setDaemon(true);
              return t;
            });
    this.scheduler.setRemoveOnCancelPolicy(true);
    this.locks = LockServiceGrpc.newBlockingStub(channel);
    this.locksAsync = LockServiceGrpc.newStub(channel);
    this.idempotency = IdempotencyServiceGrpc.newBlockingStub(channel);
    this.idempotencyAsync = IdempotencyServiceGrpc.newStub(channel);
    this.clocks = ClockServiceGrpc.newBlockingStub(channel);
    this.clocksAsync = ClockServiceGrpc.newStub(channel);
    this.breakers = BreakerServiceGrpc.newBlockingStub(channel);
    this.breakersAsync = BreakerServiceGrpc.newStub(channel);
    this.sagas = SagaServiceGrpc.newBlockingStub(channel);
    this.sagasAsync = SagaServiceGrpc.newStub(channel);
    this.events = EventServiceGrpc.newBlockingStub(channel);
    this.eventsAsync = EventServiceGrpc.newStub(channel);
    this.rateLimits = RateLimitServiceGrpc.newBlockingStub(channel);
    this.semaphores = SemaphoreServiceGrpc.newBlockingStub(channel);
    this.semaphoresAsync = SemaphoreServiceGrpc.newStub(channel);
    this.locksFuture = LockServiceGrpc.newFutureStub(channel);
    this.idempotencyFuture = IdempotencyServiceGrpc.newFutureStub(channel);
    this.clocksFuture = ClockServiceGrpc.newFutureStub(channel);
    this.breakersFuture = BreakerServiceGrpc.newFutureStub(channel);
    this.sagasFuture = SagaServiceGrpc.newFutureStub(channel);
    this.eventsFuture = EventServiceGrpc.newFutureStub(channel);
    awaitConnection.bind(channel, scheduler);
    if (!maxReconnectBackoff.isZero()) {
      ReconnectBackoffCap.install(channel, scheduler, maxReconnectBackoff);
    }
  }

  /** A client configured from the environment (see the class comment). */
  public static ResilienceClient create() {
    return builder().build();
  }

  /** A builder whose unset values come from the environment. */
  public static Builder builder() {
    return new Builder();
  }

  // ---- stubs -------------------------------------------------------------------------------

  /** The channel, for stubs of other services (e.g. {@code grpc.health.v1}). */
  public ManagedChannel channel() {
    return channel;
  }

  /** The address this client talks to. */
  public String address() {
    return address;
  }

  /** The default deadline of unary calls ({@link Duration#ZERO}: none). */
  public Duration callTimeout() {
    return callTimeout;
  }

  public LockServiceGrpc.LockServiceBlockingStub locks() {
    return locks;
  }

  public LockServiceGrpc.LockServiceStub locksAsync() {
    return locksAsync;
  }

  public IdempotencyServiceGrpc.IdempotencyServiceBlockingStub idempotency() {
    return idempotency;
  }

  public IdempotencyServiceGrpc.IdempotencyServiceStub idempotencyAsync() {
    return idempotencyAsync;
  }

  public ClockServiceGrpc.ClockServiceBlockingStub clocks() {
    return clocks;
  }

  public ClockServiceGrpc.ClockServiceStub clocksAsync() {
    return clocksAsync;
  }

  public BreakerServiceGrpc.BreakerServiceBlockingStub breakers() {
    return breakers;
  }

  public BreakerServiceGrpc.BreakerServiceStub breakersAsync() {
    return breakersAsync;
  }

  public SagaServiceGrpc.SagaServiceBlockingStub sagas() {
    return sagas;
  }

  public SagaServiceGrpc.SagaServiceStub sagasAsync() {
    return sagasAsync;
  }

  public EventServiceGrpc.EventServiceBlockingStub events() {
    return events;
  }

  public EventServiceGrpc.EventServiceStub eventsAsync() {
    return eventsAsync;
  }

  public RateLimitServiceGrpc.RateLimitServiceBlockingStub rateLimits() {
    return rateLimits;
  }

  public SemaphoreServiceGrpc.SemaphoreServiceBlockingStub semaphores() {
    return semaphores;
  }

  public SemaphoreServiceGrpc.SemaphoreServiceStub semaphoresAsync() {
    return semaphoresAsync;
  }

  LockServiceGrpc.LockServiceFutureStub locksFuture() {
    return locksFuture;
  }

  IdempotencyServiceGrpc.IdempotencyServiceFutureStub idempotencyFuture() {
    return idempotencyFuture;
  }

  ClockServiceGrpc.ClockServiceFutureStub clocksFuture() {
    return clocksFuture;
  }

  BreakerServiceGrpc.BreakerServiceFutureStub breakersFuture() {
    return breakersFuture;
  }

  SagaServiceGrpc.SagaServiceFutureStub sagasFuture() {
    return sagasFuture;
  }

  EventServiceGrpc.EventServiceFutureStub eventsFuture() {
    return eventsFuture;
  }

  // ---- locks -------------------------------------------------------------------------------

  /**
   * Opens a HoldLock session on {@code key}: returns once the lock is held; the sidecar renews the
   * lease every TTL/3 until {@link LockSession#close()}, and releases it if this process dies. Use
   * it with try-with-resources:
   *
   * <pre>{@code
   * try (LockSession session = client.holdLock("stock/sku-1", LockOptions.defaults())) {
   *   stock.reserve(sku, 1, session.lease().fencingToken());
   * } // releases; throws LeaseLostException if the lease was lost meanwhile
   * }</pre>
   *
   * @throws NotAcquiredException the wait ({@link LockOptions#waitTimeout}) ended without the lock
   * @throws InvalidArgumentException the key or an option is out of bounds
   * @throws SidecarException the sidecar did not answer, or another error
   */
  public LockSession holdLock(String key, LockOptions options) {
    return LockSession.open(this, key, options);
  }

  /** {@link #holdLock(String, LockOptions)} with {@link LockOptions#defaults()}. */
  public LockSession holdLock(String key) {
    return holdLock(key, LockOptions.defaults());
  }

  /**
   * Runs {@code fn} while holding {@code key} through a HoldLock session, and releases the lock
   * when it returns or throws. {@code fn} gets the {@link Lease} (pass its fencing token to the
   * resource you protect) and a {@link Cancellation} that fires the moment the lease is lost, so it
   * can stop writing.
   *
   * <p>Returns what {@code fn} returns. If {@code fn} throws, the lock is released and the
   * exception is rethrown (a lease loss is added to it as suppressed). If the lease was lost while
   * {@code fn} ran and {@code fn} returned normally, throws {@link LeaseLostException}: the
   * critical section may have run without exclusion.
   *
   * <p>Bounded: acquiring waits at most the wait timeout plus the call timeout (or the caller's
   * gRPC Context deadline); after {@code fn}, the release waits at most until the lease's local
   * deadline or the call timeout, whichever comes first, and then throws {@link
   * ReleaseUnconfirmedException} (or {@link LeaseLostException} with {@code RENEWAL_OVERDUE} once
   * the local deadline passed): the lock frees itself when its lease expires.
   *
   * @throws NotAcquiredException the wait ended without the lock; {@code fn} did not run
   * @throws DeadlineExceededException the sidecar did not answer the acquire in time
   */
  public <T, E extends Exception> T withLock(
      String key, LockOptions options, LockedCallable<T, E> fn) throws E {
    Objects.requireNonNull(fn, "fn");
    LockSession session = holdLock(key, options);
    T result;
    try {
      result = fn.call(session.lease(), session.cancellation());
    } catch (Throwable t) {
      try {
        session.close();
      } catch (RuntimeException e) {
        t.addSuppressed(e);
      }
      throw t;
    }
    session.close();
    return result;
  }

  /** {@link #withLock(String, LockOptions, LockedCallable)} with {@link LockOptions#defaults()}. */
  public <T, E extends Exception> T withLock(String key, LockedCallable<T, E> fn) throws E {
    return withLock(key, LockOptions.defaults(), fn);
  }

  /**
   * {@link #holdLock(String, LockOptions)} without blocking: the future completes with the session
   * once the lock is held, or fails as {@code holdLock} throws.
   */
  public CompletableFuture<LockSession> holdLockAsync(String key, LockOptions options) {
    return LockSession.openAsync(this, key, options);
  }

  /**
   * {@link #withLock(String, LockOptions, LockedCallable)} for asynchronous work: takes the lock
   * without blocking, runs {@code fn}, and releases the lock when {@code fn}'s stage completes. The
   * future completes with the stage's value, or fails with {@link NotAcquiredException} ({@code fn}
   * not called), with the stage's failure (a lease loss or an unconfirmed release attached as
   * suppressed), with {@link LeaseLostException} when the lease was lost while the stage ran, or
   * with {@link ReleaseUnconfirmedException}.
   */
  public <T> CompletableFuture<T> withLockAsync(
      String key, LockOptions options, AsyncLockedFunction<T> fn) {
    Objects.requireNonNull(fn, "fn");
    Executor ctx = Tracing.currentContextExecutor();
    return LockSession.openAsync(this, key, options)
        .thenComposeAsync(
            session ->
                Async.call(() -> fn.apply(session.lease(), session.cancellation()))
                    .handle(
                        (v, e) ->
                            e == null
                                ? BreakerGuard.Result.<T>ok(v)
                                : BreakerGuard.Result.<T>failed(e))
                    .thenComposeAsync(
                        r ->
                            session
                                .closeAsync()
                                .handle(
                                    (x, closeError) -> {
                                      if (r.error() != null) {
                                        Throwable t = Async.unwrap(r.error());
                                        if (closeError != null) {
                                          t.addSuppressed(Async.unwrap(closeError));
                                        }
                                        throw LockSession.wrap(t);
                                      }
                                      if (closeError != null) {
                                        throw LockSession.wrap(Async.unwrap(closeError));
                                      }
                                      return r.value();
                                    }),
                        ctx),
            ctx);
  }

  /** {@link #withLockAsync(String, LockOptions, AsyncLockedFunction)} with the defaults. */
  public <T> CompletableFuture<T> withLockAsync(String key, AsyncLockedFunction<T> fn) {
    return withLockAsync(key, LockOptions.defaults(), fn);
  }

  /** The asynchronous critical section of {@link #withLockAsync}. */
  @FunctionalInterface
  public interface AsyncLockedFunction<T> {
    CompletionStage<T> apply(Lease lease, Cancellation cancelled) throws Exception;
  }

  /**
   * An explicit lock handle on {@code key}, not yet acquired: {@link LockHandle#acquire()}, then
   * {@link LockHandle#fencingToken()}, {@link LockHandle#locked()}, {@link LockHandle#extend()},
   * {@link LockHandle#release()}. Nothing renews its lease in the background (use {@link #holdLock}
   * or {@link #withLock} for that). Makes no call.
   */
  public LockHandle lock(String key, LockOptions options) {
    return new LockHandle(this, key, options);
  }

  /** {@link #lock(String, LockOptions)} with {@link LockOptions#defaults()}. */
  public LockHandle lock(String key) {
    return lock(key, LockOptions.defaults());
  }

  // ---- rate limits and bulkheads -----------------------------------------------------------

  /**
   * The rate limiter {@code limiter} (declared in the sidecar's config) on {@code key}, taking 1
   * per call without waiting; {@link RateLimiter#withCost}, {@link RateLimiter#withWaitTimeout}
   * change that. Makes no call.
   */
  public RateLimiter rateLimiter(String limiter, String key) {
    return new RateLimiter(this, limiter, key, 1, Duration.ZERO);
  }

  /**
   * Takes {@code cost} from {@code key} of the rate limiter {@code limiter}, the sidecar waiting up
   * to {@code waitTimeout} for it to fit: see {@link RateLimiter#take()}.
   */
  public RateDecision take(String limiter, String key, long cost, Duration waitTimeout) {
    return new RateLimiter(this, limiter, key, cost, waitTimeout).take();
  }

  /**
   * Opens a HoldPermit session: returns once one of {@code limit} permits of the bulkhead {@code
   * name} (shared by every sidecar) is held; the sidecar renews it every TTL/3 until {@link
   * PermitSession#close()}, and gives it back if this process dies. The options are the lock
   * session's (ttl, waitTimeout, owner, maxHold), and so is the safety: see {@link PermitSession}.
   *
   * <pre>{@code
   * try (PermitSession permit = client.holdPermit("payments-db", 8, LockOptions.defaults()
   *     .waitTimeout(Duration.ofSeconds(2)))) {
   *   db.query(q, permit.lease().fencingToken());
   * } // gives the permit back; throws LeaseLostException if it was lost meanwhile
   * }</pre>
   *
   * @throws BulkheadFullException the wait ended without a permit
   * @throws InvalidArgumentException the name, limit or an option is out of bounds
   * @throws SidecarException the sidecar did not answer, or another error
   */
  public PermitSession holdPermit(String name, int limit, LockOptions options) {
    return PermitSession.open(this, name, limit, options);
  }

  /** {@link #holdPermit(String, int, LockOptions)} without blocking. */
  public CompletableFuture<PermitSession> holdPermitAsync(
      String name, int limit, LockOptions options) {
    return PermitSession.openAsync(this, name, limit, options);
  }

  /**
   * Runs {@code fn} while holding one of {@code limit} permits of the bulkhead {@code name}, as
   * {@link #withLock(String, LockOptions, LockedCallable)} runs it under a lock, with the same
   * guarantees (the {@link Cancellation} fires the moment the permit is lost, by the sidecar's word
   * or by this process's clock; a loss while {@code fn} ran is a {@link LeaseLostException}; the
   * acquire and the release are bounded).
   *
   * @throws BulkheadFullException the wait ended without a permit; {@code fn} did not run
   * @throws DeadlineExceededException the sidecar did not answer the acquire in time
   */
  public <T, E extends Exception> T withPermit(
      String name, int limit, LockOptions options, LockedCallable<T, E> fn) throws E {
    Objects.requireNonNull(fn, "fn");
    PermitSession session = holdPermit(name, limit, options);
    T result;
    try {
      result = fn.call(session.lease(), session.cancellation());
    } catch (Throwable t) {
      try {
        session.close();
      } catch (RuntimeException e) {
        t.addSuppressed(e);
      }
      throw t;
    }
    session.close();
    return result;
  }

  /** {@link #withPermit(String, int, LockOptions, LockedCallable)} with the defaults. */
  public <T, E extends Exception> T withPermit(String name, int limit, LockedCallable<T, E> fn)
      throws E {
    return withPermit(name, limit, LockOptions.defaults(), fn);
  }

  // ---- breakers ----------------------------------------------------------------------------

  /**
   * A guard of the sidecar's circuit breaker {@code name} around any function (see {@link
   * BreakerGuard}). Breakers are named; the sidecar's config gives their policies (a name it does
   * not declare gets its {@code default} policy). Makes no call.
   */
  public BreakerGuard breaker(String name, BreakerOptions options) {
    return new BreakerGuard(this, name, options);
  }

  /** {@link #breaker(String, BreakerOptions)} with {@link BreakerOptions#defaults()}. */
  public BreakerGuard breaker(String name) {
    return breaker(name, BreakerOptions.defaults());
  }

  /**
   * Has the sidecar make an HTTP request to {@code upstream} (a name of its config's {@code
   * upstreams}) through the upstream's breaker, with its timeouts and retries, and returns the
   * response: a response of any status is a result. The gRPC deadline is the request's timeout
   * (default 30 s) plus the client's call timeout.
   *
   * @throws BreakerOpenException the upstream's breaker is open: nothing was sent ({@link
   *     BreakerOpenException#retryDelay()})
   * @throws UpstreamUnknownException the upstream is not configured, or the path leaves its base URL
   * @throws UpstreamUnavailableException no response: connections failed on every attempt
   * @throws UpstreamTimeoutException the request's timeout passed
   * @throws LimitExceededException the response body is larger than the upstream allows
   * @throws InvalidArgumentException another bad field ({@code violations()} names it)
   */
  public UpstreamResponse executeCall(String upstream, UpstreamRequest request) {
    return Async.await(executeCallAsync(upstream, request));
  }

  /** {@link #executeCall} without blocking. */
  public CompletableFuture<UpstreamResponse> executeCallAsync(
      String upstream, UpstreamRequest request) {
    Objects.requireNonNull(upstream, "upstream");
    Objects.requireNonNull(request, "request");
    long deadline = request.effectiveTimeout().plus(effectiveCallTimeout()).toNanos();
    return Async.unary(
            breakersFuture
                .withDeadlineAfter(deadline, TimeUnit.NANOSECONDS)
                .executeCall(request.toProto(upstream)))
        .thenApply(UpstreamResponse::of);
  }

  // ---- sagas -------------------------------------------------------------------------------

  /**
   * Starts the saga {@code id} (or resumes it: starting is idempotent on id and name) and returns
   * it, to record steps on and complete or abort (see {@link Saga}).
   *
   * @throws SagaStateConflictException the id is taken by a saga of another name
   */
  public Saga startSaga(String id, String name, SagaOptions options) {
    return Async.await(startSagaAsync(id, name, options));
  }

  /** {@link #startSaga(String, String, SagaOptions)} with {@link SagaOptions#defaults()}. */
  public Saga startSaga(String id, String name) {
    return startSaga(id, name, SagaOptions.defaults());
  }

  /** {@link #startSaga(String, String, SagaOptions)} without blocking. */
  public CompletableFuture<Saga> startSagaAsync(String id, String name, SagaOptions options) {
    Objects.requireNonNull(id, "id");
    Objects.requireNonNull(name, "name");
    Objects.requireNonNull(options, "options");
    StartSagaRequest.Builder req =
        StartSagaRequest.newBuilder().setSagaId(id).setName(name).putAllMetadata(options.metadata());
    if (!options.timeout().isZero()) {
      req.setTimeout(Protos.duration(options.timeout()));
    }
    return Async.unary(sagasFuture.startSaga(req.build())).thenApply(r -> new Saga(this, id, name));
  }

  /**
   * Runs {@code body} as the saga {@code id}: starts it, runs {@code body} (which records its steps
   * with {@link Saga#step} or {@link Saga#addCompensation}), completes the saga when {@code body}
   * returns and aborts it when {@code body} throws (the sidecar then compensates the recorded steps,
   * newest first), rethrowing the exception with a failed abort attached as suppressed.
   */
  public <T, E extends Exception> T saga(
      String id, String name, SagaOptions options, SagaBody<T, E> body) throws E {
    Objects.requireNonNull(body, "body");
    Saga saga = startSaga(id, name, options);
    T result;
    try {
      result = body.run(saga);
    } catch (Throwable t) {
      try {
        uninterrupted(
            () -> {
              saga.abort("saga body failed: " + t);
              return null;
            });
      } catch (SagaStateConflictException alreadyEnded) {
        // A step already aborted it (or it timed out): it is compensating.
      } catch (RuntimeException e) {
        t.addSuppressed(e);
      }
      throw t;
    }
    saga.complete();
    return result;
  }

  /** The body of {@link #saga}: records and performs the saga's steps. */
  @FunctionalInterface
  public interface SagaBody<T, E extends Exception> {
    T run(Saga saga) throws E;
  }

  // ---- clocks ------------------------------------------------------------------------------

  /** The Lamport clock {@code name} (see {@link LamportClock}). Makes no call. */
  public LamportClock lamportClock(String name) {
    return new LamportClock(this, name);
  }

  // ---- idempotency -------------------------------------------------------------------------

  /**
   * A fingerprint of a request for {@link #idempotent}: {@code "sha256:"} and the hex SHA-256 of
   * {@code request}. Pass the request in a canonical form (e.g. the body as received), so that a
   * retry has the same fingerprint and a different request reusing the key does not.
   */
  public static String fingerprint(byte[] request) {
    try {
      byte[] sum = MessageDigest.getInstance("SHA-256").digest(request);
      return "sha256:" + HexFormat.of().formatHex(sum);
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("SHA-256 is required of every JVM", e);
    }
  }

  /** {@link #fingerprint(byte[])} of {@code request} as UTF-8. */
  public static String fingerprint(String request) {
    return fingerprint(request.getBytes(StandardCharsets.UTF_8));
  }

  /**
   * Runs {@code operation} at most once for {@code key} across every caller of every sidecar
   * sharing the store, and returns its result to all of them.
   *
   * <ul>
   *   <li>The first caller ({@code STARTED}) runs it and records the result; if it throws, the key
   *       is released (a later call runs it again) and the exception is rethrown.
   *   <li>Callers that find the key in progress ({@code IN_PROGRESS}) wait for it, woken by its
   *       completion, for at most {@link IdempotentOptions#maxWait()}, then throw {@link
   *       IdempotencyInProgressException}.
   *   <li>Callers that find it completed ({@code COMPLETED}) get the stored result without running
   *       {@code operation}.
   * </ul>
   *
   * <p>If the process running it dies, the key is taken over by the next caller once the lease
   * expires ({@link IdempotentOptions#leaseTtl}).
   *
   * @param fingerprint identifies the request (see {@link #fingerprint(byte[])})
   * @throws IdempotencyKeyMismatchException the key was used with another fingerprint
   * @throws LeaseLostException the operation ran but its lease was taken over meanwhile: it may
   *     have run twice
   * @throws SidecarException another error from the sidecar (UNAVAILABLE is retried first)
   */
  public <E extends Exception> IdempotentResult idempotent(
      String key, String fingerprint, IdempotentOptions options, ResumableOperation<E> operation)
      throws E {
    Objects.requireNonNull(key, "key");
    Objects.requireNonNull(fingerprint, "fingerprint");
    Objects.requireNonNull(options, "options");
    Objects.requireNonNull(operation, "operation");
    long start = System.nanoTime();
    long deadline = start + options.maxWait().toNanos();
    while (true) {
      long remaining = Math.max(0, deadline - System.nanoTime());
      Duration wait = min(options.inProgressWait(), Duration.ofMillis(remaining / 1_000_000));
      CheckOrRecordIdempotencyRequest.Builder req =
          CheckOrRecordIdempotencyRequest.newBuilder()
              .setKey(key)
              .setFingerprint(fingerprint)
              .setWaitTimeout(Protos.duration(wait));
      if (!options.leaseTtl().isZero()) {
        req.setLeaseTtl(Protos.duration(options.leaseTtl()));
      }
      if (!options.retention().isZero()) {
        req.setRetention(Protos.duration(options.retention()));
      }
      long callNanos = wait.plus(effectiveCallTimeout()).toNanos();
      CheckOrRecordIdempotencyResponse resp =
          retryUnavailable(
              options.unavailableRetries(),
              () ->
                  idempotency
                      .withDeadlineAfter(callNanos, TimeUnit.NANOSECONDS)
                      .checkOrRecordIdempotency(req.build()));
      switch (resp.getOutcome()) {
        case OUTCOME_COMPLETED:
          return IdempotentResult.of(
              resp.getResult().getData().toByteArray(), resp.getResult().getMetadataMap());
        case OUTCOME_STARTED:
          Execution exec =
              new Execution(
                  this,
                  key,
                  resp.getLeaseId(),
                  resp.getAttempt(),
                  resp.getCheckpoint().getRecoveryPoint(),
                  resp.getCheckpoint().getData().toByteArray(),
                  options.unavailableRetries());
          return runOwned(exec, operation, options);
        case OUTCOME_IN_PROGRESS:
          Duration retryAfter = Protos.duration(resp.getRetryAfter());
          long left = deadline - System.nanoTime();
          if (left <= 0) {
            throw new IdempotencyInProgressException(
                key, resp.getAttempt(), retryAfter, Duration.ofNanos(System.nanoTime() - start));
          }
          if (wait.isZero()) { // the sidecar did not wait: pause as it suggests
            sleep(
                min(
                    retryAfter.isZero() ? Duration.ofMillis(100) : retryAfter,
                    Duration.ofNanos(left)));
          }
          break;
        default:
          throw new IllegalStateException(
              "resilience: unexpected idempotency outcome " + resp.getOutcome());
      }
    }
  }

  /**
   * {@link #idempotent(String, String, IdempotentOptions, ResumableOperation)} of an operation of
   * one phase.
   */
  public <E extends Exception> IdempotentResult idempotent(
      String key, String fingerprint, IdempotentOptions options, IdempotentOperation<E> operation)
      throws E {
    Objects.requireNonNull(operation, "operation");
    return idempotent(key, fingerprint, options, (ResumableOperation<E>) exec -> operation.run());
  }

  /** {@link #idempotent(String, String, IdempotentOptions, ResumableOperation)} with defaults. */
  public <E extends Exception> IdempotentResult idempotent(
      String key, String fingerprint, IdempotentOperation<E> operation) throws E {
    return idempotent(key, fingerprint, IdempotentOptions.defaults(), operation);
  }

  /**
   * {@link #idempotent(String, String, IdempotentOptions, ResumableOperation)} for asynchronous
   * operations: every call to the sidecar is made without blocking, and {@code operation}'s stage
   * is awaited the same way. The future completes with the recorded result (this caller's or the
   * stored one), or fails as {@code idempotent} throws.
   */
  public CompletableFuture<IdempotentResult> idempotentAsync(
      String key, String fingerprint, IdempotentOptions options, AsyncIdempotentOperation operation) {
    Objects.requireNonNull(key, "key");
    Objects.requireNonNull(fingerprint, "fingerprint");
    Objects.requireNonNull(options, "options");
    Objects.requireNonNull(operation, "operation");
    long start = System.nanoTime();
    Executor ctx = Tracing.currentContextExecutor();
    return idempotentRound(
        key, fingerprint, options, operation, start, start + options.maxWait().toNanos(), ctx);
  }

  /** {@link #idempotentAsync(String, String, IdempotentOptions, AsyncIdempotentOperation)}, defaults. */
  public CompletableFuture<IdempotentResult> idempotentAsync(
      String key, String fingerprint, AsyncIdempotentOperation operation) {
    return idempotentAsync(key, fingerprint, IdempotentOptions.defaults(), operation);
  }

  /** The asynchronous operation of {@link #idempotentAsync}. */
  @FunctionalInterface
  public interface AsyncIdempotentOperation {
    CompletionStage<IdempotentResult> run(Execution execution) throws Exception;
  }

  private CompletableFuture<IdempotentResult> idempotentRound(
      String key,
      String fingerprint,
      IdempotentOptions options,
      AsyncIdempotentOperation operation,
      long start,
      long deadline,
      Executor ctx) {
    long remaining = Math.max(0, deadline - System.nanoTime());
    Duration wait = min(options.inProgressWait(), Duration.ofMillis(remaining / 1_000_000));
    CheckOrRecordIdempotencyRequest.Builder req =
        CheckOrRecordIdempotencyRequest.newBuilder()
            .setKey(key)
            .setFingerprint(fingerprint)
            .setWaitTimeout(Protos.duration(wait));
    if (!options.leaseTtl().isZero()) {
      req.setLeaseTtl(Protos.duration(options.leaseTtl()));
    }
    if (!options.retention().isZero()) {
      req.setRetention(Protos.duration(options.retention()));
    }
    long callNanos = wait.plus(effectiveCallTimeout()).toNanos();
    return Async.retryUnavailable(
            scheduler,
            ctx,
            options.unavailableRetries(),
            () ->
                Async.unary(
                    idempotencyFuture
                        .withDeadlineAfter(callNanos, TimeUnit.NANOSECONDS)
                        .checkOrRecordIdempotency(req.build())))
        .thenComposeAsync(
            resp -> {
              switch (resp.getOutcome()) {
                case OUTCOME_COMPLETED:
                  return CompletableFuture.completedFuture(
                      IdempotentResult.of(
                          resp.getResult().getData().toByteArray(),
                          resp.getResult().getMetadataMap()));
                case OUTCOME_STARTED:
                  Execution exec =
                      new Execution(
                          this,
                          key,
                          resp.getLeaseId(),
                          resp.getAttempt(),
                          resp.getCheckpoint().getRecoveryPoint(),
                          resp.getCheckpoint().getData().toByteArray(),
                          options.unavailableRetries());
                  return runOwnedAsync(exec, operation, options, ctx);
                case OUTCOME_IN_PROGRESS:
                  Duration retryAfter = Protos.duration(resp.getRetryAfter());
                  long left = deadline - System.nanoTime();
                  if (left <= 0) {
                    return CompletableFuture.failedFuture(
                        new IdempotencyInProgressException(
                            key,
                            resp.getAttempt(),
                            retryAfter,
                            Duration.ofNanos(System.nanoTime() - start)));
                  }
                  CompletableFuture<Void> pause =
                      wait.isZero() // the sidecar did not wait: pause as it suggests
                          ? Async.delay(
                              scheduler,
                              min(
                                  retryAfter.isZero() ? Duration.ofMillis(100) : retryAfter,
                                  Duration.ofNanos(left)))
                          : CompletableFuture.completedFuture(null);
                  return pause.thenComposeAsync(
                      x ->
                          idempotentRound(
                              key, fingerprint, options, operation, start, deadline, ctx),
                      ctx);
                default:
                  return CompletableFuture.failedFuture(
                      new IllegalStateException(
                          "resilience: unexpected idempotency outcome " + resp.getOutcome()));
              }
            },
            ctx);
  }

  private CompletableFuture<IdempotentResult> runOwnedAsync(
      Execution exec, AsyncIdempotentOperation operation, IdempotentOptions options, Executor ctx) {
    return Async.call(() -> operation.run(exec))
        .handle(
            (v, e) ->
                e == null
                    ? (v == null
                        ? BreakerGuard.Result.<IdempotentResult>failed(
                            new NullPointerException("idempotent operation returned null"))
                        : BreakerGuard.Result.ok(v))
                    : BreakerGuard.Result.<IdempotentResult>failed(Async.unwrap(e)))
        .thenComposeAsync(
            r -> {
              if (r.error() != null) {
                Throwable t = r.error();
                return Async.retryUnavailable(
                        scheduler,
                        ctx,
                        options.unavailableRetries(),
                        () ->
                            Async.unary(
                                idempotencyFuture.releaseIdempotency(
                                    ReleaseIdempotencyRequest.newBuilder()
                                        .setKey(exec.key())
                                        .setLeaseId(exec.leaseId())
                                        .build())))
                    .handle(
                        (x, re) -> {
                          Throwable rt = re == null ? null : Async.unwrap(re);
                          if (rt instanceof SidecarException se
                              && !(rt instanceof LeaseLostException)) {
                            t.addSuppressed(
                                se.withContext(
                                    "release of idempotency key \""
                                        + exec.key()
                                        + "\" failed; it frees itself when its lease expires"));
                          }
                          return r.get();
                        });
              }
              IdempotentResult result = r.value();
              IdempotencyResult recorded =
                  IdempotencyResult.newBuilder()
                      .setData(ByteString.copyFrom(result.rawData()))
                      .putAllMetadata(result.metadata())
                      .build();
              return Async.retryUnavailable(
                      scheduler,
                      ctx,
                      options.unavailableRetries(),
                      () ->
                          Async.unary(
                              idempotencyFuture.completeIdempotency(
                                  CompleteIdempotencyRequest.newBuilder()
                                      .setKey(exec.key())
                                      .setLeaseId(exec.leaseId())
                                      .setResult(recorded)
                                      .build())))
                  .handle(
                      (x, ce) -> {
                        if (ce == null) {
                          return result;
                        }
                        Throwable c = Async.unwrap(ce);
                        if (c instanceof LeaseLostException e) {
                          throw LockSession.wrap(
                              e.withContext(
                                  "idempotency key \""
                                      + exec.key()
                                      + "\" ran but its lease was taken over; it may have run"
                                      + " twice"));
                        }
                        if (c instanceof SidecarException e) {
                          throw LockSession.wrap(
                              e.withContext(
                                  "idempotency key \""
                                      + exec.key()
                                      + "\" ran but its result was not recorded"));
                        }
                        throw LockSession.wrap(c);
                      });
            },
            ctx);
  }

  /** Runs the operation as the owner of the key, then completes or releases it. */
  private <E extends Exception> IdempotentResult runOwned(
      Execution exec, ResumableOperation<E> operation, IdempotentOptions options) throws E {
    IdempotentResult result;
    try {
      result = Objects.requireNonNull(operation.run(exec), "idempotent operation returned null");
    } catch (Throwable t) {
      try {
        uninterrupted(
            () ->
                retryUnavailable(
                    options.unavailableRetries(),
                    () ->
                        idempotency.releaseIdempotency(
                            ReleaseIdempotencyRequest.newBuilder()
                                .setKey(exec.key())
                                .setLeaseId(exec.leaseId())
                                .build())));
      } catch (LeaseLostException ignored) {
        // Taken over or expired: nothing of ours to release.
      } catch (SidecarException e) {
        t.addSuppressed(
            e.withContext(
                "release of idempotency key \""
                    + exec.key()
                    + "\" failed; it frees itself when its lease expires"));
      }
      throw t;
    }
    IdempotencyResult recorded =
        IdempotencyResult.newBuilder()
            .setData(ByteString.copyFrom(result.rawData()))
            .putAllMetadata(result.metadata())
            .build();
    try {
      uninterrupted(
          () ->
              retryUnavailable(
                  options.unavailableRetries(),
                  () ->
                      idempotency.completeIdempotency(
                          CompleteIdempotencyRequest.newBuilder()
                              .setKey(exec.key())
                              .setLeaseId(exec.leaseId())
                              .setResult(recorded)
                              .build())));
    } catch (LeaseLostException e) {
      throw e.withContext(
          "idempotency key \""
              + exec.key()
              + "\" ran but its lease was taken over; it may have run twice");
    } catch (SidecarException e) {
      throw e.withContext(
          "idempotency key \"" + exec.key() + "\" ran but its result was not recorded");
    }
    return result;
  }

  // ---- events ------------------------------------------------------------------------------

  /**
   * Appends an event to {@code topic} and returns its id. With {@link
   * PublishOptions#idempotencyKey}, retries append once: a key published before returns the first
   * event's id with {@link PublishResult#duplicate()} set.
   *
   * @throws InvalidArgumentException a bad topic name or an oversized event ({@code violations()}
   *     names the field)
   * @throws TopicUnknownException the sidecar's config declares topics, and not this one
   * @throws SidecarException another error from the sidecar
   */
  public PublishResult publish(String topic, byte[] payload, PublishOptions options) {
    Objects.requireNonNull(topic, "topic");
    Objects.requireNonNull(payload, "payload");
    Objects.requireNonNull(options, "options");
    PublishRequest req =
        PublishRequest.newBuilder()
            .setTopic(topic)
            .setPayload(ByteString.copyFrom(payload))
            .setKey(options.key())
            .putAllHeaders(options.headers())
            .setIdempotencyKey(options.idempotencyKey())
            .build();
    try {
      PublishResponse resp = events.publish(req);
      return new PublishResult(resp.getEventId(), resp.getDuplicate());
    } catch (StatusRuntimeException e) {
      throw SidecarException.from(e);
    }
  }

  /** {@link #publish(String, byte[], PublishOptions)} of a UTF-8 string. */
  public PublishResult publish(String topic, String payload, PublishOptions options) {
    return publish(topic, payload.getBytes(StandardCharsets.UTF_8), options);
  }

  /** {@link #publish(String, byte[], PublishOptions)} with {@link PublishOptions#defaults()}. */
  public PublishResult publish(String topic, byte[] payload) {
    return publish(topic, payload, PublishOptions.defaults());
  }

  /**
   * Joins the consumer group {@code group} of {@code topic} as {@code consumer}, and returns once
   * the sidecar confirmed it (events published from then on are delivered to the group). Each
   * event goes to one consumer of each group; an event not settled within the visibility timeout
   * is redelivered, with its delivery count increased, until the group's max deliveries move it to
   * {@code <topic>.dead}. Delivery is at least once: make the handling idempotent, keyed by the
   * event id.
   *
   * <pre>{@code
   * try (Subscription sub = client.subscribe("orders.placed", "shipping", "shipping-1",
   *     SubscribeOptions.defaults())) {
   *   sub.run(event -> ship(event));   // acks when ship returns, nacks when it throws
   * }
   * }</pre>
   *
   * @throws InvalidArgumentException a bad topic, group or consumer name or option
   * @throws TopicUnknownException the sidecar's config declares topics, and not this one
   * @throws SidecarException no confirmation within the call timeout, or another error
   */
  public Subscription subscribe(
      String topic, String group, String consumer, SubscribeOptions options) {
    Objects.requireNonNull(topic, "topic");
    Objects.requireNonNull(group, "group");
    Objects.requireNonNull(consumer, "consumer");
    Objects.requireNonNull(options, "options");
    SubscribeRequest.Builder req =
        SubscribeRequest.newBuilder()
            .setTopic(topic)
            .setGroup(group)
            .setConsumer(consumer)
            .setMaxInFlight(options.maxInFlight())
            .setMaxDeliveries(options.maxDeliveries())
            .setStartFrom(options.startFrom());
    if (options.visibilityTimeout() != null) {
      req.setVisibilityTimeout(Protos.duration(options.visibilityTimeout()));
    }
    return Subscription.open(this, req.build(), options.nackDelay());
  }

  /** {@link #subscribe(String, String, String, SubscribeOptions)} with the defaults. */
  public Subscription subscribe(String topic, String group, String consumer) {
    return subscribe(topic, group, consumer, SubscribeOptions.defaults());
  }

  /**
   * Acknowledges an event. Returns false when it was not pending in the group (already acked, or
   * dead-lettered): harmless.
   */
  public boolean ack(String topic, String group, String eventId) {
    try {
      return events
          .ack(AckRequest.newBuilder().setTopic(topic).setGroup(group).setEventId(eventId).build())
          .getAcked();
    } catch (StatusRuntimeException e) {
      throw SidecarException.from(e);
    }
  }

  /**
   * Gives an event back for redelivery after {@code retryAfter} ({@link Duration#ZERO}: at once),
   * counting one more delivery. Returns false when it was not pending in the group.
   */
  public boolean nack(String topic, String group, String eventId, Duration retryAfter) {
    NackRequest.Builder req =
        NackRequest.newBuilder().setTopic(topic).setGroup(group).setEventId(eventId);
    if (!retryAfter.isZero()) {
      req.setRetryAfter(Protos.duration(retryAfter));
    }
    try {
      return events.nack(req.build()).getRequeued();
    } catch (StatusRuntimeException e) {
      throw SidecarException.from(e);
    }
  }

  /** The sidecar's Postgres outbox relay: enabled, healthy, backlog, lag, ... */
  public GetOutboxStatusResponse outboxStatus() {
    try {
      return events.getOutboxStatus(GetOutboxStatusRequest.getDefaultInstance());
    } catch (StatusRuntimeException e) {
      throw SidecarException.from(e);
    }
  }

  // ---- plumbing ----------------------------------------------------------------------------

  /** The bound used for waits the sidecar must answer, even when callTimeout is disabled. */
  Duration effectiveCallTimeout() {
    return callTimeout.isZero() ? DEFAULT_CALL_TIMEOUT : callTimeout;
  }

  ScheduledThreadPoolExecutor scheduler() {
    return scheduler;
  }

  /**
   * Runs {@code call}, retrying UNAVAILABLE up to {@code retries} times after the sidecar's
   * RetryInfo delay (100 ms when none). Errors are thrown as typed {@link SidecarException}s.
   */
  static <T> T retryUnavailable(int retries, Supplier<T> call) {
    for (int i = 0; ; i++) {
      try {
        return call.get();
      } catch (StatusRuntimeException e) {
        SidecarException se = SidecarException.from(e);
        if (se.code() != Status.Code.UNAVAILABLE || i >= retries) {
          throw se;
        }
        Duration delay = se.retryDelay().isZero() ? Duration.ofMillis(100) : se.retryDelay();
        try {
          Thread.sleep(delay.toMillis());
        } catch (InterruptedException ie) {
          Thread.currentThread().interrupt();
          throw se;
        }
      }
    }
  }

  /**
   * Runs {@code call} with the thread's interrupt flag cleared (a blocking gRPC call on an
   * interrupted thread is cancelled at once), and restores the flag afterwards: cleanup calls must
   * reach the sidecar even when the work was interrupted.
   */
  static <T> T uninterrupted(Supplier<T> call) {
    boolean interrupted = Thread.interrupted();
    try {
      return call.get();
    } finally {
      if (interrupted) {
        Thread.currentThread().interrupt();
      }
    }
  }

  private static void sleep(Duration d) {
    try {
      Thread.sleep(Math.max(1, d.toMillis()));
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw SidecarException.from(
          Status.CANCELLED
              .withDescription("interrupted while waiting for a duplicate in progress")
              .withCause(e)
              .asRuntimeException());
    }
  }

  private static Duration min(Duration a, Duration b) {
    return a.compareTo(b) <= 0 ? a : b;
  }

  /**
   * Closes the channel: open sessions end (the sidecar releases their locks) and calls in flight
   * are cancelled after a grace period of 5 seconds.
   */
  @Override
  public void close() {
    scheduler.shutdownNow();
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
        channel.awaitTermination(5, TimeUnit.SECONDS);
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  @Override
  public String toString() {
    return "ResilienceClient{" + address + "}";
  }

  /** Configures a {@link ResilienceClient}. Unset values come from the environment. */
  public static final class Builder {
    private Map<String, String> env = System.getenv();
    private String address;
    private String token;
    private Duration callTimeout = DEFAULT_CALL_TIMEOUT;
    private Duration maxReconnectBackoff = DEFAULT_MAX_RECONNECT_BACKOFF;
    private Duration connectWait = DEFAULT_CONNECT_WAIT;
    private boolean propagateTraceContext = true;
    private final List<ClientInterceptor> interceptors = new ArrayList<>();

    private Builder() {}

    /** The sidecar address, {@code host:port} or {@code unix:///path}; overrides SIDECAR_ADDR. */
    public Builder address(String address) {
      this.address = Objects.requireNonNull(address, "address");
      return this;
    }

    /** The API token; overrides SIDECAR_API_TOKEN and SIDECAR_API_TOKEN_FILE. */
    public Builder token(String token) {
      this.token = Objects.requireNonNull(token, "token");
      return this;
    }

    /**
     * The deadline of unary calls that have none ({@link #DEFAULT_CALL_TIMEOUT}; {@link
     * Duration#ZERO} disables it).
     */
    public Builder callTimeout(Duration callTimeout) {
      Objects.requireNonNull(callTimeout, "callTimeout");
      if (callTimeout.isNegative()) {
        throw new IllegalArgumentException("callTimeout must not be negative");
      }
      this.callTimeout = callTimeout;
      return this;
    }

    /**
     * The longest pause between two attempts to reconnect to a sidecar that went away (default
     * {@link #DEFAULT_MAX_RECONNECT_BACKOFF}, 1 s: a restarted sidecar is found within about a
     * second; gRPC's own backoff grows to 120 s). {@link Duration#ZERO} leaves gRPC's backoff as
     * it is.
     */
    public Builder maxReconnectBackoff(Duration max) {
      Objects.requireNonNull(max, "max");
      if (max.isNegative()) {
        throw new IllegalArgumentException("maxReconnectBackoff must not be negative");
      }
      this.maxReconnectBackoff = max;
      return this;
    }

    /**
     * How long a call made while the sidecar is unreachable (e.g. restarting) waits for the
     * connection before it fails with {@link SidecarUnreachableException} (default {@link
     * #DEFAULT_CONNECT_WAIT}, 2 s), at most its deadline less a quarter of it (up to 250 ms, left
     * for the failure); a call without a deadline (a stream) counts the call timeout as its
     * deadline. With the reconnect
     * backoff capped at about a second, a call made during a restart succeeds once the sidecar is
     * back. {@link Duration#ZERO}: calls fail at once while the sidecar is unreachable. Calls made
     * with gRPC's {@code withWaitForReady()} wait until their deadline, as always.
     */
    public Builder connectWait(Duration wait) {
      Objects.requireNonNull(wait, "wait");
      if (wait.isNegative()) {
        throw new IllegalArgumentException("connectWait must not be negative");
      }
      this.connectWait = wait;
      return this;
    }

    /**
     * Whether every call carries the current OpenTelemetry context ({@code traceparent}, with the
     * globally configured propagator) when the OpenTelemetry API is on the class path (default
     * true; without the API nothing is sent either way).
     */
    public Builder propagateTraceContext(boolean propagate) {
      this.propagateTraceContext = propagate;
      return this;
    }

    /** The variables read instead of {@link System#getenv()} (for tests and embedding). */
    public Builder environment(Map<String, String> env) {
      this.env = Map.copyOf(Objects.requireNonNull(env, "env"));
      return this;
    }

    /** Adds interceptors to every call (e.g. tracing). */
    public Builder intercept(ClientInterceptor... interceptors) {
      this.interceptors.addAll(List.of(interceptors));
      return this;
    }

    /**
     * Builds the client. The channel connects lazily: a sidecar that is not running makes the first
     * call fail with UNAVAILABLE, not this method.
     *
     * @throws UncheckedIOException the token file named by SIDECAR_API_TOKEN_FILE cannot be read
     */
    public ResilienceClient build() {
      String addr = address != null ? address : env.getOrDefault(ENV_ADDR, "");
      if (addr.isBlank()) {
        addr = DEFAULT_ADDR;
      }
      String tok = token != null ? token : resolveToken(env);

      ManagedChannelBuilder<?> b =
          Grpc.newChannelBuilder(target(addr), InsecureChannelCredentials.create());
      // grpc-java calls the last interceptor of the list first. Waiting for the connection comes
      // last (innermost): it sees the default deadline, and the others run on the caller's thread.
      Duration window = callTimeout.isZero() ? DEFAULT_CALL_TIMEOUT : callTimeout;
      AwaitConnection await = new AwaitConnection(connectWait.toNanos(), window.toNanos());
      List<ClientInterceptor> all = new ArrayList<>();
      all.add(await);
      all.addAll(interceptors);
      if (!tok.isEmpty()) {
        all.add(new BearerToken(tok));
      }
      if (!callTimeout.isZero()) {
        all.add(new DefaultDeadline(callTimeout));
      }
      ClientInterceptor tracing = propagateTraceContext ? Tracing.interceptor() : null;
      if (tracing != null) {
        all.add(tracing);
      }
      b.intercept(all);
      b.userAgent("resilience-sidecar-client-java");
      return new ResilienceClient(b.build(), addr, callTimeout, maxReconnectBackoff, await);
    }

    private static String resolveToken(Map<String, String> env) {
      String tok = env.getOrDefault(ENV_TOKEN, "");
      if (!tok.isEmpty()) {
        return tok;
      }
      String file = env.getOrDefault(ENV_TOKEN_FILE, "");
      if (file.isEmpty()) {
        return "";
      }
      try {
        return Files.readString(Path.of(file), StandardCharsets.UTF_8).strip();
      } catch (IOException e) {
        throw new UncheckedIOException(
            "resilience: cannot read the API token file " + ENV_TOKEN_FILE + "=" + file, e);
      }
    }

    /** A gRPC target for an address: unix: and scheme:// targets as they are, else DNS. */
    static String target(String addr) {
      if (addr.startsWith("unix:") || addr.contains("://")) {
        return addr;
      }
      return "dns:///" + addr;
    }
  }

  /** Gives every unary call without a deadline the default one. */
  static final class DefaultDeadline implements ClientInterceptor {
    private final long nanos;

    DefaultDeadline(Duration timeout) {
      this.nanos = timeout.toNanos();
    }

    @Override
    public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
        MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
      if (method.getType() == MethodDescriptor.MethodType.UNARY && options.getDeadline() == null) {
        options = options.withDeadlineAfter(nanos, TimeUnit.NANOSECONDS);
      }
      return next.newCall(method, options);
    }
  }

  /** Sends {@code authorization: Bearer <token>}. The sidecar is on localhost: no network. */
  static final class BearerToken implements ClientInterceptor {
    private static final Metadata.Key<String> AUTHORIZATION =
        Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private final String value;

    BearerToken(String token) {
      this.value = "Bearer " + token;
    }

    @Override
    public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
        MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
      return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
        @Override
        public void start(Listener<RespT> listener, Metadata headers) {
          headers.put(AUTHORIZATION, value);
          super.start(listener, headers);
        }
      };
    }
  }
}
