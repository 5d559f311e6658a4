// LamportClock: a named Lamport clock kept by the sidecar, as LamportClock
// in clients/go/resilience/clock.go.

import type { SidecarClient } from "./client.js";

/**
 * A named Lamport clock kept by the sidecar and shared by every sidecar in
 * the same namespace on the same store. Stamp what you send (or any event
 * you want ordered) with stamp(); pass the stamp of what you receive to
 * observe(). If event a happened before event b, a's stamp is lower than
 * b's. Values are bigints from 1 to 2^63-1, never handed out twice.
 *
 * Errors: StoreUnavailableError when the store is down (retry after
 * retryDelayMs), LimitExceededError when the clock is exhausted,
 * InvalidArgumentError for a bad name or stamp.
 */
export class LamportClock {
  constructor(
    private readonly client: SidecarClient,
    /** The clock's name: 1-512 bytes of UTF-8 without control characters. */
    readonly name: string,
  ) {}

  /** A new value for an outgoing message or a local event, greater than every value handed out before. */
  async stamp(): Promise<bigint> {
    return (await this.reserve(1)).first;
  }

  /** A block of n consecutive new values (1-100000) in one call: for stamping a batch of messages. */
  async reserve(n: number): Promise<{ first: bigint; last: bigint }> {
    const r = await this.client.clock.nextLamport({ clock: this.name, count: n });
    return { first: r.first, last: r.last };
  }

  /**
   * Merges the stamp of an incoming message (at most 2^63-2): the clock
   * moves to max(current, stamp) + 1, and that value, the stamp of the
   * receive event, is returned.
   */
  async observe(stamp: bigint | number): Promise<bigint> {
    return (await this.client.clock.observeLamport({ clock: this.name, timestamp: BigInt(stamp) })).timestamp;
  }

  /** The highest value handed out so far (0n if none), without advancing the clock. */
  async current(): Promise<bigint> {
    return (await this.client.clock.getLamport({ clock: this.name })).timestamp;
  }
}
