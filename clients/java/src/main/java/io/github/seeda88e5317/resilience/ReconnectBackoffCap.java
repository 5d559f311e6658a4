package io.github.seeda88e5317.resilience;

import io.grpc.ConnectivityState;
import io.grpc.ManagedChannel;
import java.time.Duration;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * Caps grpc-java's reconnect backoff. The channel's backoff grows from 1 s by 1.6 per failed
 * attempt to 120 s, and grpc-java has no public setting for it; so a sidecar restarted after a few
 * seconds away would be found only 10 s or more later. This watches the channel's state and, while
 * it is in TRANSIENT_FAILURE, calls {@link ManagedChannel#resetConnectBackoff()} every {@code max}
 * (the channel stays in TRANSIENT_FAILURE across failed attempts, so a timer, not the state
 * change, paces it): the next attempt is never more than {@code max} away. A channel that is IDLE
 * (no calls) makes no attempts at all, as before.
 */
final class ReconnectBackoffCap {
  private final ManagedChannel channel;
  private final ScheduledExecutorService scheduler;
  private final long maxNanos;
  private final AtomicBoolean timing = new AtomicBoolean();

  private ReconnectBackoffCap(
      ManagedChannel channel, ScheduledExecutorService scheduler, Duration max) {
    this.channel = channel;
    this.scheduler = scheduler;
    this.maxNanos = max.toNanos();
  }

  /** Starts watching {@code channel} until it shuts down. */
  static void install(ManagedChannel channel, ScheduledExecutorService scheduler, Duration max) {
    ReconnectBackoffCap cap = new ReconnectBackoffCap(channel, scheduler, max);
    cap.watch(channel.getState(false));
  }

  private void watch(ConnectivityState seen) {
    if (seen == ConnectivityState.SHUTDOWN) {
      return;
    }
    if (seen == ConnectivityState.TRANSIENT_FAILURE && timing.compareAndSet(false, true)) {
      schedule();
    }
    channel.notifyWhenStateChanged(seen, () -> watch(channel.getState(false)));
  }

  private void schedule() {
    try {
      scheduler.schedule(this::tick, maxNanos, TimeUnit.NANOSECONDS);
    } catch (RejectedExecutionException e) {
      timing.set(false); // the client is closing
    }
  }

  private void tick() {
    if (channel.getState(false) == ConnectivityState.TRANSIENT_FAILURE) {
      channel.resetConnectBackoff();
      schedule();
    } else {
      timing.set(false);
      // A TRANSIENT_FAILURE entered between the check and this line starts a new timer.
      if (channel.getState(false) == ConnectivityState.TRANSIENT_FAILURE
          && timing.compareAndSet(false, true)) {
        schedule();
      }
    }
  }
}
