package io.github.seeda88e5317.resilience.spring;

import io.github.seeda88e5317.resilience.Cancellation;
import io.github.seeda88e5317.resilience.Lease;
import java.util.Optional;

/**
 * The lock held by the innermost {@link WithLock} method running on this thread: its lease (with
 * the fencing token) and the cancellation that fires when the lease is lost.
 */
public final class CurrentLock {

  record Held(Lease lease, Cancellation cancellation) {}

  private static final ThreadLocal<Held> HELD = new ThreadLocal<>();

  private CurrentLock() {}

  /** The lease of the innermost {@code @WithLock} method on this thread, if any. */
  public static Optional<Lease> lease() {
    Held h = HELD.get();
    return h == null ? Optional.empty() : Optional.of(h.lease());
  }

  /** Fires when the lease of the innermost {@code @WithLock} method on this thread is lost. */
  public static Optional<Cancellation> cancellation() {
    Held h = HELD.get();
    return h == null ? Optional.empty() : Optional.of(h.cancellation());
  }

  static Held enter(Lease lease, Cancellation cancellation) {
    Held previous = HELD.get();
    HELD.set(new Held(lease, cancellation));
    return previous;
  }

  static void exit(Held previous) {
    if (previous == null) {
      HELD.remove();
    } else {
      HELD.set(previous);
    }
  }
}
