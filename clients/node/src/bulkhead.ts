// Bulkheads: withPermit runs fn while holding one of `limit` permits of a
// semaphore shared by every sidecar, through a HoldPermit session with
// withLock's safety (the same session code: holdSession in lock.ts).

import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";

import type { SidecarClient } from "./client.js";
import { DEFAULT_LOCK_TTL_MS, holdSession, type LockOptions } from "./lock.js";
import { HoldPermitResponse_Lost_Reason } from "./gen/resilience/v1/semaphore_pb.js";
import type { HoldPermitRequest_AcquireSchema, HoldPermitRequestSchema, HoldPermitResponse } from "./gen/resilience/v1/semaphore_pb.js";

/** A held bulkhead permit as withPermit's fn sees it (the permit id stays in the session). */
export interface BulkheadPermit {
  /** The bulkhead's (semaphore's) name. */
  name: string;
  /** Strictly increasing per bulkhead across every grant. */
  fencingToken: bigint;
  /** When the permit expires in the store unless renewed, by the sidecar's clock (updated on each renewal). */
  expireTime: Date;
  owner: string;
  /** The TTL the session asked for, in ms: the base of the local deadline. */
  ttlMs: number;
  /** performance.now() when the grant or the last renewal confirmation was received. */
  renewedAt: number;
  /** performance.now() at which the permit is lost unless a renewal arrives first. */
  deadline: number;
}

/** Options of withPermit: those of withLock (ttlMs, waitMs, owner, maxHoldMs, timeoutMs, signal). */
export type PermitOptions = LockOptions;

/**
 * BulkheadFullError: the wait ended without a free permit (as
 * resilience4j's BulkheadFullException): `held` of `limit` were live.
 */
export class BulkheadFullError extends Error {
  constructor(
    readonly bulkhead: string,
    readonly held: number,
    readonly limit: number,
  ) {
    super(`resilience: bulkhead ${JSON.stringify(bulkhead)} full: ${held} of ${limit} permits held`);
    this.name = "BulkheadFullError";
  }
}

type HoldPermitRequestInit = MessageInitShape<typeof HoldPermitRequestSchema>;

/**
 * Runs fn while holding one of `limit` permits of the bulkhead `name`
 * (never more than `limit` holders across every sidecar), through a
 * HoldPermit session: the sidecar renews the permit every ttl/3 and gives
 * it back when fn settles, or if this process dies. The permit is a lease
 * with withLock's safety: fn's signal aborts with a LeaseLostError when the
 * sidecar reports the permit lost, or when this process's monotonic clock
 * passes its local deadline (ttl - max(ttl/10, 100 ms) after the last
 * renewal received: lostReason RENEWAL_OVERDUE), before the permit can
 * expire in the store and go to someone else.
 *
 * Rejects with BulkheadFullError when the wait (opts.waitMs, default 0)
 * ended without a permit; with DeadlineExceededError when acquiring took
 * longer than opts.timeoutMs (default waitMs + the client's timeoutMs);
 * with fn's error; with a LeaseLostError when the permit was lost while fn
 * ran, even if fn resolved; with ReleaseUnconfirmedError when the release
 * was not confirmed in time.
 */
export function withPermit<T>(
  client: SidecarClient,
  name: string,
  limit: number,
  fn: (signal: AbortSignal, permit: BulkheadPermit) => Promise<T> | T,
  opts: PermitOptions = {},
): Promise<T> {
  const ttlMs = opts.ttlMs ?? DEFAULT_LOCK_TTL_MS;
  const acquire: MessageInitShape<typeof HoldPermitRequest_AcquireSchema> = { name, limit, owner: opts.owner ?? "" };
  if (opts.ttlMs !== undefined) acquire.ttl = durationFromMs(opts.ttlMs);
  if (opts.waitMs !== undefined) acquire.waitTimeout = durationFromMs(opts.waitMs);
  if (opts.maxHoldMs !== undefined) acquire.maxHold = durationFromMs(opts.maxHoldMs);
  return holdSession<T, BulkheadPermit, HoldPermitResponse["event"]>(
    client,
    {
      what: "permit",
      rpc: "HoldPermit",
      key: name,
      ttlMs,
      open: (requests, signal) => client.semaphore.holdPermit(requests as AsyncIterable<HoldPermitRequestInit>, { signal }),
      acquire,
      notAcquired: (v) => new BulkheadFullError(name, v.held, v.limit),
      lostReason: (r) => HoldPermitResponse_Lost_Reason[r],
      lease: (p, grantedAt) => ({
        name: p.name || name,
        fencingToken: p.fencingToken,
        expireTime: p.expireTime ? timestampDate(p.expireTime) : new Date(Date.now() + ttlMs),
        owner: p.owner,
        ttlMs,
        renewedAt: grantedAt,
        deadline: 0,
      }),
    },
    fn,
    opts,
  );
}
