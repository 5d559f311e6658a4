package io.github.seeda88e5317.resilience;

/**
 * The wait for a bulkhead permit ended without one: {@link #held()} of {@link #limit()} permits
 * were live (as resilience4j's {@code BulkheadFullException}). An expected outcome, not a sidecar
 * error: the work did not run.
 */
public class BulkheadFullException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final String name;
  private final int held;
  private final int limit;

  BulkheadFullException(String name, int held, int limit) {
    super("resilience: bulkhead \"" + name + "\" full: " + held + " of " + limit + " permits held");
    this.name = name;
    this.held = held;
    this.limit = limit;
  }

  /** The bulkhead's name. */
  public String name() {
    return name;
  }

  /** The live permits when the wait ended. */
  public int held() {
    return held;
  }

  /** The bulkhead's limit. */
  public int limit() {
    return limit;
  }
}
