// Rate limits: take (one Take, a typed decision) and rateLimited (a wrapper
// running fn once its cost was taken, else rejecting with RateLimitedError),
// as clients/go/resilience/ratelimit.go does for Go.

import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";

import type { SidecarClient } from "./client.js";

/** The answer of a Take. */
export interface RateDecision {
  /** Whether the cost was taken. */
  allowed: boolean;
  /** The largest cost a Take made now would be allowed. */
  remaining: bigint;
  /** Set when refused: ms until the cost fits if no one else takes from the key. */
  retryAfterMs: number;
  /** Ms until the key is back to full capacity. */
  resetAfterMs: number;
  /** The limiter's capacity (burst, or limit per window). */
  limit: bigint;
  /** The store was down and the limiter's store_down mode answered. */
  degraded: boolean;
  /** Refused from the sidecar's memory of an exhausted key. */
  cached: boolean;
}

/** Options of take and rateLimited. */
export interface TakeOptions {
  /** The key counted (default "": the limiter as a whole); for rateLimited also a function of fn's arguments. */
  key?: string;
  /** How much to take (default 1; at most the limiter's max_cost). */
  cost?: number | bigint;
  /** How long the sidecar waits for the cost to fit, in ms (default 0: answer at once; at most 10 min). */
  waitMs?: number;
  /** Bound of the call in ms (default waitMs + the client's timeoutMs). */
  timeoutMs?: number;
  /** Aborting it ends the call. */
  signal?: AbortSignal;
}

/**
 * RateLimitedError: a rateLimited function did not run, because its cost
 * did not fit within the wait (as resilience4j's RequestNotPermitted). Try
 * again after retryAfterMs.
 */
export class RateLimitedError extends Error {
  constructor(
    readonly limiter: string,
    readonly key: string,
    readonly cost: bigint,
    /** The decision's retryAfterMs. */
    readonly retryAfterMs: number,
    readonly decision: RateDecision,
  ) {
    super(`resilience: rate limited: limiter ${JSON.stringify(limiter)} key ${JSON.stringify(key)}: cost ${cost} does not fit; retry after ${retryAfterMs} ms`);
    this.name = "RateLimitedError";
  }
}

/**
 * Takes opts.cost (default 1) from opts.key of the declared rate limiter
 * `limiter`, the sidecar waiting up to opts.waitMs for it to fit (FIFO per
 * key). A refusal is a decision with allowed false and retryAfterMs, not an
 * error. Rejects with LimiterUnknownError for an undeclared limiter,
 * InvalidArgumentError for a bad cost, DeadlineExceededError when no answer
 * came within opts.timeoutMs (default waitMs + the client's timeoutMs).
 */
export async function take(client: SidecarClient, limiter: string, opts: Omit<TakeOptions, "key"> & { key?: string } = {}): Promise<RateDecision> {
  const waitMs = opts.waitMs ?? 0;
  const timeoutMs = opts.timeoutMs ?? (client.timeoutMs > 0 ? waitMs + client.timeoutMs : undefined);
  const r = await client.rateLimit.take(
    {
      limiter,
      key: opts.key ?? "",
      cost: BigInt(opts.cost ?? 1),
      waitTimeout: waitMs > 0 ? durationFromMs(waitMs) : undefined,
    },
    { timeoutMs, signal: opts.signal },
  );
  return {
    allowed: r.allowed,
    remaining: r.remaining,
    retryAfterMs: r.retryAfter ? durationMs(r.retryAfter) : 0,
    resetAfterMs: r.resetAfter ? durationMs(r.resetAfter) : 0,
    limit: r.limit,
    degraded: r.degraded,
    cached: r.cached,
  };
}

/**
 * Wraps fn so that each call first takes opts.cost from the limiter's key
 * (opts.key, or opts.key(...args)), the sidecar waiting up to opts.waitMs
 * (default 0: try once), as resilience4j's RateLimiter.decorateSupplier.
 * When the cost does not fit, the call rejects with a RateLimitedError
 * carrying retryAfterMs and fn does not run; the errors of take reject as
 * they are.
 */
export function rateLimited<A extends unknown[], R>(
  client: SidecarClient,
  limiter: string,
  fn: (...args: A) => Promise<R> | R,
  opts: Omit<TakeOptions, "key" | "signal"> & { key?: string | ((...args: A) => string) } = {},
): (...args: A) => Promise<R> {
  return async (...args: A): Promise<R> => {
    const key = typeof opts.key === "function" ? opts.key(...args) : (opts.key ?? "");
    const d = await take(client, limiter, { ...opts, key });
    if (!d.allowed) throw new RateLimitedError(limiter, key, BigInt(opts.cost ?? 1), d.retryAfterMs, d);
    return fn(...args);
  };
}
