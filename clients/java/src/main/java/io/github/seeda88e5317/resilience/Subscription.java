package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.Event;
import io.github.seeda88e5317.resilience.v1.SubscribeRequest;
import io.github.seeda88e5317.resilience.v1.SubscribeResponse;
import io.grpc.Context;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;

/**
 * A consumer's subscription to a topic, from {@link ResilienceClient#subscribe}: the sidecar
 * streams the events of the consumer group to it, in publish order, at most {@code maxInFlight}
 * unsettled at a time.
 *
 * <p>Either hand {@link #run(EventHandler)} (or {@link #start(EventHandler)}, on a thread of its
 * own) a handler, which acks each event when the handler returns and nacks it when it throws; or
 * iterate the events yourself and settle each with {@link #ack} or {@link #nack}:
 *
 * <pre>{@code
 * try (Subscription sub = client.subscribe("orders.placed", "shipping", "shipping-1")) {
 *   for (Event e : sub) {
 *     ship(e);
 *     sub.ack(e);
 *   }
 * }
 * }</pre>
 *
 * <p>{@link #close()}, from any thread, ends the subscription: the iteration (and {@link #run})
 * then ends without an exception. An event neither acked nor nacked is redelivered after the
 * visibility timeout. The iteration itself is for one thread at a time; {@code ack}, {@code nack}
 * and {@code close} are thread-safe.
 */
public final class Subscription implements AutoCloseable, Iterable<Event> {
  private static final System.Logger LOG = System.getLogger("io.github.seeda88e5317.resilience");

  private final ResilienceClient client;
  private final String topic;
  private final String group;
  private final String consumer;
  private final Duration nackDelay;
  private final Context.CancellableContext context;
  private final Iterator<SubscribeResponse> responses;
  private final boolean groupCreated;
  private volatile boolean closed;
  private volatile boolean firstTimedOut;
  private Event next;

  private Subscription(ResilienceClient client, SubscribeRequest request, Duration nackDelay) {
    this.client = client;
    this.topic = request.getTopic();
    this.group = request.getGroup();
    this.consumer = request.getConsumer();
    this.nackDelay = nackDelay;
    this.context = Context.current().withCancellation();
    Context previous = context.attach();
    try {
      this.responses = client.events().subscribe(request);
    } finally {
      context.detach(previous);
    }
    this.groupCreated = awaitSubscribed();
  }

  static Subscription open(ResilienceClient client, SubscribeRequest request, Duration nackDelay) {
    return new Subscription(client, request, nackDelay);
  }

  /** Waits for the sidecar's confirmation, at most the client's call timeout. */
  private boolean awaitSubscribed() {
    Duration bound = client.effectiveCallTimeout();
    ScheduledFuture<?> timer = null;
    try {
      timer =
          client
              .scheduler()
              .schedule(
                  () -> {
                    firstTimedOut = true;
                    context.cancel(null);
                  },
                  bound.toNanos(),
                  TimeUnit.NANOSECONDS);
    } catch (RejectedExecutionException e) {
      // The client is closing: the call fails by itself.
    }
    try {
      if (!responses.hasNext()) {
        throw SidecarException.from(
            Status.UNAVAILABLE
                .withDescription("the subscription to \"" + topic + "\" ended without an answer")
                .asRuntimeException());
      }
      SubscribeResponse first = responses.next();
      if (first.getKindCase() != SubscribeResponse.KindCase.SUBSCRIBED) {
        throw SidecarException.from(
            Status.INTERNAL
                .withDescription("unexpected first Subscribe message " + first.getKindCase())
                .asRuntimeException());
      }
      return first.getSubscribed().getGroupCreated();
    } catch (StatusRuntimeException e) {
      context.cancel(null);
      if (firstTimedOut) {
        throw SidecarException.from(
            Status.DEADLINE_EXCEEDED
                .withDescription(
                    "no answer from the sidecar at "
                        + client.address()
                        + " to Subscribe within "
                        + bound.toMillis()
                        + " ms (is it running? frozen?)")
                .asRuntimeException());
      }
      throw SidecarException.from(e);
    } finally {
      if (timer != null) {
        timer.cancel(false);
      }
    }
  }

  public String topic() {
    return topic;
  }

  public String group() {
    return group;
  }

  public String consumer() {
    return consumer;
  }

  /** Whether this subscription created the consumer group. */
  public boolean groupCreated() {
    return groupCreated;
  }

  /** Whether {@link #close()} was called. */
  public boolean isClosed() {
    return closed;
  }

  /**
   * The events, as they arrive: {@code hasNext()} blocks until one does, and returns false once
   * the subscription is closed. It throws the sidecar's error ({@link ShuttingDownException} when
   * it stops, a {@link SidecarException} with code UNAVAILABLE when the connection breaks) when
   * the stream ends otherwise. Interrupting the thread waiting in {@code hasNext()} closes the
   * subscription.
   */
  @Override
  public Iterator<Event> iterator() {
    return new Iterator<>() {
      @Override
      public boolean hasNext() {
        return advance();
      }

      @Override
      public Event next() {
        if (!advance()) {
          throw new NoSuchElementException("subscription closed");
        }
        Event e = Subscription.this.next;
        Subscription.this.next = null;
        return e;
      }
    };
  }

  private boolean advance() {
    while (next == null) {
      if (closed) {
        return false;
      }
      try {
        if (!responses.hasNext()) {
          if (closed) {
            return false;
          }
          throw SidecarException.from(
              Status.UNAVAILABLE
                  .withDescription(
                      "the sidecar at "
                          + client.address()
                          + " ended the subscription to \""
                          + topic
                          + "\"")
                  .asRuntimeException());
        }
        SubscribeResponse r = responses.next();
        if (r.getKindCase() == SubscribeResponse.KindCase.EVENT) {
          next = r.getEvent();
        } // else: a kind this client does not know
      } catch (StatusRuntimeException e) {
        if (closed) {
          return false;
        }
        if (Thread.currentThread().isInterrupted()) {
          close();
          return false;
        }
        throw SidecarException.from(e);
      }
    }
    return true;
  }

  /**
   * Marks the event processed by the group. Returns false when it was not pending (already acked,
   * or moved to the dead-letter topic): harmless.
   */
  public boolean ack(Event event) {
    return client.ack(topic, group, event.getEventId());
  }

  /**
   * Gives the event back: it is redelivered after {@code retryAfter} ({@link Duration#ZERO}: at
   * once), counting one more delivery. Returns false when it was not pending.
   */
  public boolean nack(Event event, Duration retryAfter) {
    return client.nack(topic, group, event.getEventId(), retryAfter);
  }

  /** {@link #nack(Event, Duration)} at once. */
  public boolean nack(Event event) {
    return nack(event, Duration.ZERO);
  }

  /**
   * Calls {@code handler} for each event, one at a time, in delivery order, until the subscription
   * is closed (or the thread interrupted). An event is acked when the handler returns and nacked
   * when it throws an exception: redelivered at once, or after {@link SubscribeOptions#nackDelay},
   * or after {@link RetryAfterException#retryAfter()}; the exception is logged (System.Logger
   * {@code io.github.seeda88e5317.resilience}: one WARNING line, the stack trace at DEBUG) and
   * the loop goes on. An {@link Error}
   * nacks the event and propagates.
   *
   * <p>The ack or nack of the event being handled is sent even after {@link #close()} (and with
   * the interrupt flag set aside), so that a finished event is not delivered again.
   *
   * @throws SidecarException the sidecar ended the subscription, or an ack or nack failed
   */
  public void run(EventHandler handler) {
    Objects.requireNonNull(handler, "handler");
    for (Event event : this) {
      Throwable failure = null;
      try {
        handler.handle(event);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        failure = e;
      } catch (Exception | Error e) {
        failure = e;
      }
      if (failure == null) {
        ResilienceClient.uninterrupted(() -> ack(event));
        continue;
      }
      Duration delay =
          failure instanceof RetryAfterException r ? r.retryAfter() : nackDelay;
      if (!(failure instanceof RetryAfterException)) {
        String what =
            "event " + event.getEventId() + " of \"" + topic + "\" (delivery "
                + event.getDeliveryCount() + ") failed, nacked";
        LOG.log(System.Logger.Level.WARNING, what + ": " + failure);
        LOG.log(System.Logger.Level.DEBUG, what, failure);
      }
      ResilienceClient.uninterrupted(() -> nack(event, delay));
      if (failure instanceof Error err) {
        throw err;
      }
      if (Thread.currentThread().isInterrupted()) {
        close();
      }
    }
  }

  /**
   * {@link #run(EventHandler)} on a new daemon thread. The future completes when the subscription
   * ends: normally after {@link #close()}, exceptionally with the error that ended it otherwise.
   */
  public CompletableFuture<Void> start(EventHandler handler) {
    Objects.requireNonNull(handler, "handler");
    CompletableFuture<Void> done = new CompletableFuture<>();
    Thread t =
        new Thread(
            () -> {
              try {
                run(handler);
                done.complete(null);
              } catch (Throwable e) {
                done.completeExceptionally(e);
              }
            },
            "resilience-subscription-" + topic + "/" + group + "/" + consumer);
    t.setDaemon(true);
    t.start();
    return done;
  }

  /** Ends the subscription (idempotent, thread-safe): the iteration stops without an exception. */
  @Override
  public void close() {
    closed = true;
    context.cancel(null);
  }

  @Override
  public String toString() {
    return "Subscription(topic="
        + topic
        + ", group="
        + group
        + ", consumer="
        + consumer
        + (closed ? ", closed)" : ", open)");
  }
}
