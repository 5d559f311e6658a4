// withLock: a critical section under a HoldLock session, as WithLock in
// clients/go/resilience/lock.go.

import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";

import type { SidecarClient } from "./client.js";
import { describeCallError } from "./client.js";
import { fromError, LeaseLostError, makeError, NotAcquiredError } from "./errors.js";
import { HoldLockResponse_Lost_Reason } from "./gen/resilience/v1/lock_pb.js";
import type { HoldLockRequest_AcquireSchema, HoldLockRequestSchema, HoldLockResponse } from "./gen/resilience/v1/lock_pb.js";

/** A held lock as the application sees it (the lease id stays in the session). */
export interface Lease {
  key: string;
  /**
   * Strictly increasing per key across every grant. Pass it to the resource
   * the lock protects, which refuses any write with a token lower than the
   * highest it has seen: that stops a holder that paused past its TTL.
   */
  fencingToken: bigint;
  /** When the lease expires unless renewed (the session renews it every ttl/3). */
  expireTime: Date;
  owner: string;
}

export interface LockOptions {
  /** Lease TTL in ms (100 ms-24 h; the sidecar's default is 10 s). Renewed every ttl/3. */
  ttlMs?: number;
  /** How long to wait for a held lock in ms (0-5 min; default 0: try once). */
  waitMs?: number;
  /** Label others see as the holder (GetLock, NotAcquiredError.holder). */
  owner?: string;
  /** After this many ms the sidecar releases the lock and fn's signal aborts (0: no bound). */
  maxHoldMs?: number;
  /** Aborting it ends the wait or the session (fn's signal aborts too). */
  signal?: AbortSignal;
}

/** The sidecar's default lease TTL, used for the renewal watchdog when ttlMs is unset. */
const DEFAULT_TTL_MS = 10_000;

type HoldLockRequestInit = MessageInitShape<typeof HoldLockRequestSchema>;

/**
 * Runs fn while holding the lock `key` through a HoldLock session: the
 * sidecar keeps the lease alive, and the AbortSignal given to fn aborts
 * (with a LeaseLostError as its reason) the moment the lease is lost, so fn
 * can stop writing. The lock is released when fn settles, and by the
 * sidecar if this process dies.
 *
 * Resolves with fn's result. Rejects with NotAcquiredError when the wait
 * ended without the lock; with fn's error when fn throws; and with a
 * LeaseLostError when the lease was lost while fn ran, even if fn resolved
 * (its error, if any, is the LeaseLostError's cause): the critical section
 * may have run without exclusion.
 *
 * The signal also aborts when no renewal was heard from the sidecar within
 * a TTL (a frozen sidecar or a broken connection), since the lease may then
 * have expired in the store.
 */
export async function withLock<T>(
  client: SidecarClient,
  key: string,
  fn: (signal: AbortSignal, lease: Lease) => Promise<T> | T,
  opts: LockOptions = {},
): Promise<T> {
  const acquire: MessageInitShape<typeof HoldLockRequest_AcquireSchema> = { key, owner: opts.owner ?? "" };
  if (opts.ttlMs !== undefined) acquire.ttl = durationFromMs(opts.ttlMs);
  if (opts.waitMs !== undefined) acquire.waitTimeout = durationFromMs(opts.waitMs);
  if (opts.maxHoldMs !== undefined) acquire.maxHold = durationFromMs(opts.maxHoldMs);
  opts.signal?.throwIfAborted();

  // The session ends when this function is done with it. opts.signal ends
  // it only while waiting for the lock; once fn runs, opts.signal reaches fn
  // through its signal, and the lock is released when fn settles.
  const session = new AbortController();
  const abortWait = () => session.abort(opts.signal?.reason);
  opts.signal?.addEventListener("abort", abortWait, { once: true });
  const requests = new Queue<HoldLockRequestInit>();
  requests.push({ msg: { case: "acquire", value: acquire } });
  const responses = client.lock.holdLock(requests, { signal: session.signal })[Symbol.asyncIterator]();

  try {
    // The first answer comes after the wait at most: bound it, so that a
    // frozen sidecar is an error, not a hang.
    let first: IteratorResult<HoldLockResponse>;
    try {
      first = await withTimeout(responses.next(), client.timeoutMs > 0 ? (opts.waitMs ?? 0) + client.timeoutMs : 0, () => {
        session.abort();
        return makeError({
          code: Code.DeadlineExceeded,
          message: `no answer from the sidecar at ${client.addr} to HoldLock within ${(opts.waitMs ?? 0) + client.timeoutMs} ms (is it running? frozen?)`,
        });
      });
    } catch (e) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw describeCallError(fromError(e), client.addr, undefined, false);
    } finally {
      opts.signal?.removeEventListener("abort", abortWait);
    }
    if (opts.signal?.aborted) throw opts.signal.reason; // aborted as the answer came
    if (first.done) {
      throw makeError({ code: Code.Unavailable, message: `HoldLock session for ${JSON.stringify(key)} ended without an answer` });
    }
    const ev = first.value.event;
    if (ev.case === "notAcquired") {
      throw new NotAcquiredError(key, ev.value.holder?.owner ?? "", ev.value.holder?.fencingToken ?? 0n);
    }
    if (ev.case !== "acquired") {
      throw makeError({ code: Code.Internal, message: `unexpected first HoldLock event ${String(ev.case)}` });
    }
    const l = ev.value;
    const lease: Lease = {
      key: l.key,
      fencingToken: l.fencingToken,
      expireTime: l.expireTime ? timestampDate(l.expireTime) : new Date(Date.now() + (opts.ttlMs ?? DEFAULT_TTL_MS)),
      owner: l.owner,
    };

    const lostCtl = new AbortController();
    let lost: LeaseLostError | undefined;
    // released: the sidecar confirmed the release; abandoned: we stopped
    // waiting for that confirmation and cancelled the stream.
    let released = false;
    let abandoned = false;
    const markLost = (err: LeaseLostError) => {
      if (lost) return;
      lost = err;
      lostCtl.abort(err);
    };
    // Renewal watchdog: the session renews every ttl/3; a whole TTL without
    // hearing of a renewal means the lease may have expired in the store.
    const ttlMs = opts.ttlMs ?? DEFAULT_TTL_MS;
    let watchdog: NodeJS.Timeout | undefined;
    let fnDone = false;
    const arm = () => {
      clearTimeout(watchdog);
      if (fnDone) return; // fn settled: only the release's answer matters now
      watchdog = setTimeout(() => {
        markLost(
          new LeaseLostError({
            code: Code.FailedPrecondition,
            reason: "LEASE_LOST",
            lostReason: "RENEWAL_OVERDUE",
            message: `no renewal of the lease on ${JSON.stringify(key)} heard from the sidecar within its TTL (${ttlMs} ms): it may have expired; stop the critical section`,
          }),
        );
      }, ttlMs);
      watchdog.unref();
    };
    arm();

    // The session's only reader, until the stream ends.
    const reader = (async () => {
      try {
        for (;;) {
          const r = await responses.next();
          if (r.done) {
            if (!released) {
              markLost(
                new LeaseLostError({
                  code: Code.FailedPrecondition,
                  reason: "LEASE_LOST",
                  lostReason: "STREAM_ENDED",
                  message: `HoldLock session on ${JSON.stringify(key)} ended without a release`,
                }),
              );
            }
            return;
          }
          const e = r.value.event;
          if (e.case === "renewed") {
            arm();
          } else if (e.case === "released") {
            released = true;
          } else if (e.case === "lost") {
            const why = HoldLockResponse_Lost_Reason[e.value.reason]?.replace(/^REASON_/, "") ?? String(e.value.reason);
            markLost(
              new LeaseLostError({
                code: Code.FailedPrecondition,
                reason: "LEASE_LOST",
                lostReason: why,
                message: `lock ${JSON.stringify(key)} lost (${why}): ${e.value.message}`,
              }),
            );
          }
        }
      } catch (err) {
        if (released || abandoned) return;
        const cause = fromError(err);
        markLost(
          new LeaseLostError({
            code: Code.FailedPrecondition,
            reason: "LEASE_LOST",
            lostReason: "STREAM_ENDED",
            message: `HoldLock session on ${JSON.stringify(key)} broke: ${(cause as Error)?.message ?? String(cause)}`,
            cause,
          }),
        );
      } finally {
        clearTimeout(watchdog);
      }
    })();

    const fnSignal = opts.signal ? AbortSignal.any([opts.signal, lostCtl.signal]) : lostCtl.signal;
    let result: T | undefined;
    let fnErr: unknown;
    let failed = false;
    try {
      result = await fn(fnSignal, lease);
    } catch (e) {
      failed = true;
      fnErr = e;
    }
    fnDone = true;
    clearTimeout(watchdog);

    // Release and wait for the sidecar to confirm (or report the loss).
    requests.push({ msg: { case: "release", value: {} } });
    requests.close();
    const confirmMs = client.timeoutMs > 0 ? client.timeoutMs : 0;
    await withTimeout(reader, confirmMs, () => {
      // Unconfirmed: cancelling the stream makes the sidecar release the lock.
      abandoned = true;
      session.abort();
      return undefined;
    }).catch(() => undefined);
    clearTimeout(watchdog);

    const lostErr = lost as LeaseLostError | undefined;
    if (lostErr) {
      if (failed && fnErr !== lostErr) {
        throw new LeaseLostError({
          code: lostErr.code,
          reason: lostErr.reason,
          lostReason: lostErr.lostReason,
          message: `${lostErr.rawMessage}; and the critical section failed: ${(fnErr as Error)?.message ?? String(fnErr)}`,
          cause: fnErr,
        });
      }
      throw lostErr;
    }
    if (failed) throw fnErr;
    return result as T;
  } finally {
    requests.close();
    session.abort();
  }
}

/** Resolves or rejects like p, or with onTimeout's error after ms (0: no bound). */
export function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error | undefined): Promise<T> {
  if (!ms) return p;
  let timer: NodeJS.Timeout;
  const t = new Promise<never>((resolve, reject) => {
    timer = setTimeout(() => {
      const err = onTimeout();
      if (err) reject(err);
      else resolve(undefined as never);
    }, ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** An async iterable fed by push, ended by close: the request side of a stream. */
class Queue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: ((r: IteratorResult<T>) => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  close(): void {
    this.closed = true;
    if (this.waiting && this.items.length === 0) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (this.waiting = resolve));
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
      throw: (e?: unknown) => {
        this.close();
        return Promise.reject(e);
      },
    };
  }
}
