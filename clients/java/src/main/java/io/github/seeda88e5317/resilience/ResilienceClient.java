package io.github.seeda88e5317.resilience;

import com.google.protobuf.ByteString;
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
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import resilience.v1.BreakerServiceGrpc;
import resilience.v1.SagaServiceGrpc;
import resilience.v1.ClockServiceGrpc;
import resilience.v1.EventServiceGrpc;
import resilience.v1.Events.AckRequest;
import resilience.v1.Events.GetOutboxStatusRequest;
import resilience.v1.Events.GetOutboxStatusResponse;
import resilience.v1.Events.NackRequest;
import resilience.v1.Events.PublishRequest;
import resilience.v1.Events.PublishResponse;
import resilience.v1.Events.SubscribeRequest;
import resilience.v1.Idempotency.CheckOrRecordIdempotencyRequest;
import resilience.v1.Idempotency.CheckOrRecordIdempotencyResponse;
import resilience.v1.Idempotency.CompleteIdempotencyRequest;
import resilience.v1.Idempotency.IdempotencyResult;
import resilience.v1.Idempotency.ReleaseIdempotencyRequest;
import resilience.v1.IdempotencyServiceGrpc;
import resilience.v1.LockServiceGrpc;

/**
 * A connection to the resilience sidecar: the generated stubs of every service, and helpers built
 * on them ({@link #withLock}, {@link #holdLock}, {@link #idempotent}, {@link #publish}, {@link
 * #subscribe}).
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
 * #DEFAULT_CALL_TIMEOUT}, so a stopped sidecar is an error, not a hang.
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

  private ResilienceClient(ManagedChannel channel, String address, Duration callTimeout) {
    this.channel = channel;
    this.address = address;
    this.callTimeout = callTimeout;
    this.scheduler =
        new ScheduledThreadPoolExecutor(
            1,
            r -> {
              Thread t = new Thread(r, "resilience-session-watchdog");
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
   * @throws NotAcquiredException the wait ended without the lock; {@code fn} did not run
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
      List<ClientInterceptor> all = new ArrayList<>(interceptors);
      if (!tok.isEmpty()) {
        all.add(new BearerToken(tok));
      }
      if (!callTimeout.isZero()) {
        all.add(new DefaultDeadline(callTimeout));
      }
      b.intercept(all);
      b.userAgent("resilience-sidecar-client-java");
      return new ResilienceClient(b.build(), addr, callTimeout);
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
