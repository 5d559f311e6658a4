package io.github.seeda88e5317.resilience;

import io.grpc.Attributes;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ConnectivityState;
import io.grpc.Deadline;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Consumer;

/**
 * Lets a call made while the channel is not connected (the sidecar is restarting) wait for the
 * connection, at most the connect wait and never past most of its deadline, instead of failing at
 * once: gRPC fails such calls immediately while its channel is in TRANSIENT_FAILURE. When the wait
 * ends without a connection, the call goes ahead and fails as gRPC fails it ({@code UNAVAILABLE},
 * {@link SidecarUnreachableException}), with a quarter of its time (at most 250 ms) left for that,
 * so that an unreachable sidecar is reported as such and not as a deadline. Calls asking for
 * wait-for-ready, and calls on a connected channel, pass through untouched.
 *
 * <p>It is the innermost interceptor: the call options it sees carry the client's default
 * deadline, and the other interceptors run on the caller's thread. One state watch serves every
 * waiting call.
 */
final class AwaitConnection implements ClientInterceptor {
  private static final long MAX_RESERVE_NANOS = TimeUnit.MILLISECONDS.toNanos(250);

  private final long waitNanos;
  private final long streamWindowNanos;
  private volatile ManagedChannel channel;
  private volatile ScheduledExecutorService scheduler;
  private final Set<Deferred<?, ?>> waiting = ConcurrentHashMap.newKeySet();
  private final AtomicBoolean watching = new AtomicBoolean();

  /**
   * @param waitNanos the connect wait (0: none)
   * @param streamWindowNanos the window of calls without a deadline (streams): the client's call
   *     timeout, which bounds the helpers' waits for a stream's first answer
   */
  AwaitConnection(long waitNanos, long streamWindowNanos) {
    this.waitNanos = waitNanos;
    this.streamWindowNanos = streamWindowNanos;
  }

  void bind(ManagedChannel channel, ScheduledExecutorService scheduler) {
    this.scheduler = scheduler;
    this.channel = channel;
  }

  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
      MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
    ManagedChannel ch = channel;
    if (ch == null
        || waitNanos <= 0
        || options.isWaitForReady()
        || ch.getState(false) == ConnectivityState.READY) {
      return next.newCall(method, options);
    }
    Deadline deadline = options.getDeadline();
    long window =
        deadline != null ? deadline.timeRemaining(TimeUnit.NANOSECONDS) : streamWindowNanos;
    long wait = Math.min(waitNanos, window - Math.min(window / 4, MAX_RESERVE_NANOS));
    if (wait <= 0) {
      return next.newCall(method, options);
    }
    return new Deferred<>(method, options, next, wait);
  }

  private void enqueue(Deferred<?, ?> d) {
    waiting.add(d);
    ManagedChannel ch = channel;
    ConnectivityState st = ch.getState(true); // connects an IDLE channel
    if (st == ConnectivityState.READY || st == ConnectivityState.SHUTDOWN) {
      releaseAll();
      return;
    }
    if (watching.compareAndSet(false, true)) {
      ch.notifyWhenStateChanged(st, this::onStateChange);
    }
  }

  private void onStateChange() {
    ManagedChannel ch = channel;
    ConnectivityState st = ch.getState(!waiting.isEmpty());
    if (st == ConnectivityState.READY || st == ConnectivityState.SHUTDOWN) {
      releaseAll();
    }
    if (waiting.isEmpty()) {
      watching.set(false);
      // A call that started waiting just now starts the watch again.
      if (waiting.isEmpty() || !watching.compareAndSet(false, true)) {
        return;
      }
    }
    ch.notifyWhenStateChanged(st, this::onStateChange);
  }

  private void releaseAll() {
    for (Deferred<?, ?> d : waiting) {
      d.release();
    }
  }

  /** A call whose start waits for the connection; what is done to it meanwhile is queued. */
  private final class Deferred<ReqT, RespT> extends ClientCall<ReqT, RespT> {
    private final MethodDescriptor<ReqT, RespT> method;
    private final CallOptions options;
    private final Channel next;
    private final long wait;

    private final Object lock = new Object();
    private final List<Consumer<ClientCall<ReqT, RespT>>> queued = new ArrayList<>();
    private Listener<RespT> listener;
    private Metadata headers;
    private ClientCall<ReqT, RespT> real; // set when released
    private boolean drained; // every queued action reached `real`
    private boolean cancelled;
    private ScheduledFuture<?> timer;

    Deferred(MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next, long wait) {
      this.method = method;
      this.options = options;
      this.next = next;
      this.wait = wait;
    }

    @Override
    public void start(Listener<RespT> listener, Metadata headers) {
      synchronized (lock) {
        this.listener = listener;
        this.headers = headers;
        if (cancelled) {
          release(); // the real call delivers the cancellation to the listener
          return;
        }
      }
      try {
        ScheduledFuture<?> t = scheduler.schedule(this::release, wait, TimeUnit.NANOSECONDS);
        synchronized (lock) {
          timer = t;
        }
      } catch (RejectedExecutionException e) { // the client is closing
        release();
        return;
      }
      enqueue(this);
    }

    /** Starts the real call (once) and hands it what was queued. */
    void release() {
      ClientCall<ReqT, RespT> call;
      ScheduledFuture<?> t;
      synchronized (lock) {
        waiting.remove(this);
        if (real != null || listener == null) {
          return;
        }
        real = next.newCall(method, options);
        call = real;
        t = timer;
      }
      if (t != null) {
        t.cancel(false);
      }
      call.start(listener, headers);
      while (true) {
        List<Consumer<ClientCall<ReqT, RespT>>> batch;
        synchronized (lock) {
          if (queued.isEmpty()) {
            drained = true;
            return;
          }
          batch = new ArrayList<>(queued);
          queued.clear();
        }
        for (Consumer<ClientCall<ReqT, RespT>> action : batch) {
          action.accept(call);
        }
      }
    }

    private void run(Consumer<ClientCall<ReqT, RespT>> action) {
      ClientCall<ReqT, RespT> call;
      synchronized (lock) {
        if (!drained) {
          queued.add(action);
          return;
        }
        call = real;
      }
      action.accept(call);
    }

    @Override
    public void request(int numMessages) {
      run(c -> c.request(numMessages));
    }

    @Override
    public void cancel(String message, Throwable cause) {
      boolean releaseNow;
      synchronized (lock) {
        cancelled = true;
        releaseNow = real == null && listener != null;
      }
      run(c -> c.cancel(message, cause));
      if (releaseNow) {
        release(); // do not wait for the connection to tell the listener
      }
    }

    @Override
    public void halfClose() {
      run(ClientCall::halfClose);
    }

    @Override
    public void sendMessage(ReqT message) {
      run(c -> c.sendMessage(message));
    }

    @Override
    public void setMessageCompression(boolean enabled) {
      run(c -> c.setMessageCompression(enabled));
    }

    @Override
    public boolean isReady() {
      synchronized (lock) {
        return drained && real.isReady();
      }
    }

    @Override
    public Attributes getAttributes() {
      synchronized (lock) {
        return drained ? real.getAttributes() : Attributes.EMPTY;
      }
    }
  }
}
