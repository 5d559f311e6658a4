// Locks: withLock, a critical section under a HoldLock session (as WithLock
// in clients/go/resilience/lock.go), and acquireLock, an explicit handle
// (acquire -> extend / locked / fencingToken / release) as node-redlock's
// Lock. Both end a lease by the client's own monotonic clock.

import { performance } from "node:perf_hooks";

import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";

import type { SidecarClient } from "./client.js";
import { describeCallError } from "./client.js";
import { DeadlineExceededError, fromError, LeaseLostError, LostReason, makeError, NotAcquiredError, ReleaseUnconfirmedError, SidecarError } from "./errors.js";
import { HoldLockResponse_Lost_Reason } from "./gen/resilience/v1/lock_pb.js";
import type { HoldLockRequest_AcquireSchema as HoldLock_AcquireSchema, HoldLockRequestSchema, HoldLockResponse } from "./gen/resilience/v1/lock_pb.js";
import type { Timestamp } from "@bufbuild/protobuf/wkt";

/** The sidecar's default lease TTL, used for the local deadline when ttlMs is unset. */
export const DEFAULT_LOCK_TTL_MS = 10_000;

/**
 * The safety margin of a lease's local deadline: max(ttl/10, 100 ms). On
 * each grant or renewal confirmation received at monotonic time t, the
 * lease's local deadline becomes t + ttl - margin; when it passes without a
 * newer confirmation the lease is lost (LostReason.RENEWAL_OVERDUE).
 */
export function leaseMarginMs(ttlMs: number): number {
  return Math.max(ttlMs / 10, 100);
}

/** A held lock as withLock's fn sees it (the lease id stays in the session). */
export interface Lease {
  key: string;
  /**
   * Strictly increasing per key across every grant. Pass it to the resource
   * the lock protects, which refuses any write with a token lower than the
   * highest it has seen: that stops a holder that paused past its TTL.
   */
  fencingToken: bigint;
  /** When the lease expires in the store unless renewed, by the sidecar's clock (updated on each renewal). */
  expireTime: Date;
  owner: string;
  /** The TTL the session asked for, in ms: the base of the local deadline. */
  ttlMs: number;
  /** performance.now() when the grant or the last renewal confirmation was received (updated on each renewal). */
  renewedAt: number;
  /**
   * performance.now() at which the lease is lost unless a renewal
   * confirmation arrives first: renewedAt + ttlMs - leaseMarginMs(ttlMs).
   */
  deadline: number;
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
  /**
   * Bound of acquiring, wait included, in ms: DeadlineExceededError after
   * it. Default waitMs + the client's timeoutMs (none when that is 0).
   */
  timeoutMs?: number;
  /** Aborting it ends the wait or the session (fn's signal aborts too). */
  signal?: AbortSignal;
}

type HoldLockRequestInit = MessageInitShape<typeof HoldLockRequestSchema>;

/**
 * The local deadline of a lease on the monotonic clock: confirm() moves it
 * to now + ttl - margin; onOverdue runs once when it passes first.
 */
class LocalDeadline {
  renewedAt = 0;
  deadline = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    readonly ttlMs: number,
    private readonly onOverdue: () => void,
  ) {}

  confirm(t: number, ttlMs = this.ttlMs): void {
    this.renewedAt = t;
    this.deadline = t + ttlMs - leaseMarginMs(ttlMs);
    this.arm();
  }

  remaining(): number {
    return Math.max(0, this.deadline - performance.now());
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private arm(): void {
    clearTimeout(this.timer);
    if (this.stopped) return;
    const left = this.deadline - performance.now();
    if (left <= 0) {
      this.stopped = true;
      this.onOverdue();
      return;
    }
    // Timers may fire a fraction of a millisecond early: arm() again checks.
    this.timer = setTimeout(() => this.arm(), Math.ceil(left));
    this.timer.unref();
  }
}

function overdueError(key: string, ttlMs: number, since: number, what = "lock"): LeaseLostError {
  return new LeaseLostError({
    code: Code.FailedPrecondition,
    reason: "LEASE_LOST",
    lostReason: LostReason.RENEWAL_OVERDUE,
    message: `no renewal of the lease on ${what} ${JSON.stringify(key)} confirmed within ${Math.round(performance.now() - since)} ms (TTL ${ttlMs} ms less the ${leaseMarginMs(ttlMs)} ms margin): it may expire in the store; stop the critical section`,
  });
}

/**
 * Runs fn while holding the lock `key` through a HoldLock session: the
 * sidecar keeps the lease alive, and the AbortSignal given to fn aborts
 * (with a LeaseLostError as its reason) the moment the lease is lost, so fn
 * can stop writing. The lock is released when fn settles, and by the
 * sidecar if this process dies.
 *
 * The lease is also ended by this process's own clock: on the grant and on
 * each renewal confirmation received (monotonic time t) its local deadline
 * becomes t + ttl - max(ttl/10, 100 ms); if it passes without a newer
 * confirmation (a frozen sidecar, a broken connection), fn's signal aborts
 * with lostReason RENEWAL_OVERDUE, before the lease can expire in the store.
 *
 * Never hangs: acquiring is bounded by opts.timeoutMs (default waitMs + the
 * client's timeoutMs), and once fn settled the release's confirmation is
 * awaited at most until the lease's local deadline or the client's
 * timeoutMs, whichever comes first.
 *
 * Resolves with fn's result. Rejects with NotAcquiredError when the wait
 * ended without the lock; with DeadlineExceededError when acquiring took
 * longer than its bound; with fn's error when fn throws; with a
 * LeaseLostError when the lease was lost while fn ran, even if fn resolved
 * (its error, if any, is the LeaseLostError's cause): the critical section
 * may have run without exclusion; and with ReleaseUnconfirmedError (its
 * `result` is fn's result) when fn resolved under the lock but the release
 * was not confirmed in time: the lock then expires on its own.
 */
export async function withLock<T>(
  client: SidecarClient,
  key: string,
  fn: (signal: AbortSignal, lease: Lease) => Promise<T> | T,
  opts: LockOptions = {},
): Promise<T> {
  const ttlMs = opts.ttlMs ?? DEFAULT_LOCK_TTL_MS;
  const acquire: MessageInitShape<typeof HoldLock_AcquireSchema> = { key, owner: opts.owner ?? "" };
  if (opts.ttlMs !== undefined) acquire.ttl = durationFromMs(opts.ttlMs);
  if (opts.waitMs !== undefined) acquire.waitTimeout = durationFromMs(opts.waitMs);
  if (opts.maxHoldMs !== undefined) acquire.maxHold = durationFromMs(opts.maxHoldMs);
  return holdSession<T, Lease, HoldLockResponse["event"]>(
    client,
    {
      what: "lock",
      rpc: "HoldLock",
      key,
      ttlMs,
      open: (requests, signal) => client.lock.holdLock(requests as AsyncIterable<HoldLockRequestInit>, { signal }),
      acquire,
      notAcquired: (v) => new NotAcquiredError(key, v.holder?.owner ?? "", v.holder?.fencingToken ?? 0n),
      lostReason: (r) => HoldLockResponse_Lost_Reason[r],
      lease: (l, grantedAt) => ({
        key: l.key,
        fencingToken: l.fencingToken,
        expireTime: l.expireTime ? timestampDate(l.expireTime) : new Date(Date.now() + ttlMs),
        owner: l.owner,
        ttlMs,
        renewedAt: grantedAt,
        deadline: 0,
      }),
    },
    fn,
    opts,
  );
}

/** The part of a lease a session keeps up to date (Lease, Permit). */
export interface SessionLease {
  expireTime: Date;
  renewedAt: number;
  deadline: number;
}

/**
 * The events of a HoldLock or HoldPermit session (the same cases in both
 * protos), with A the grant's message and N the refusal's.
 * @internal
 */
export type HoldEvent<A, N> =
  | { case: "acquired"; value: A }
  | { case: "notAcquired"; value: N }
  | { case: "renewed"; value: { expireTime?: Timestamp } }
  | { case: "released"; value: unknown }
  | { case: "lost"; value: { reason: number; message: string } }
  | { case: undefined; value?: undefined };

type EventValue<E, C> = E extends { case: C; value: infer V } ? V : never;

/**
 * What differs between a lock's HoldLock session and a bulkhead permit's
 * HoldPermit session, for holdSession.
 * @internal
 */
export interface HoldSpec<P extends SessionLease, E extends { case: string | undefined }> {
  what: "lock" | "permit";
  rpc: string;
  key: string;
  ttlMs: number;
  /** Opens the stream; requests is its request side. */
  open(requests: AsyncIterable<unknown>, signal: AbortSignal): AsyncIterable<{ event: E }>;
  /** The acquire message (the value of the request's `acquire` case). */
  acquire: unknown;
  notAcquired(value: EventValue<E, "notAcquired">): Error;
  /** The name of a lost reason of the stream's enum (REASON_...). */
  lostReason(reason: number): string | undefined;
  lease(value: EventValue<E, "acquired">, grantedAt: number): P;
}

/**
 * Runs fn under a lease held through a session stream, with the safety
 * withLock documents (the local deadline, the bounded acquire and release,
 * the lost reasons): withLock and withPermit are this with their stream.
 * @internal
 */
export async function holdSession<T, P extends SessionLease, E extends HoldEvent<unknown, unknown>>(
  client: SidecarClient,
  spec: HoldSpec<P, E>,
  fn: (signal: AbortSignal, lease: P) => Promise<T> | T,
  opts: { waitMs?: number; timeoutMs?: number; signal?: AbortSignal },
): Promise<T> {
  const { key, ttlMs, what, rpc } = spec;
  opts.signal?.throwIfAborted();

  // The session ends when this function is done with it. opts.signal ends
  // it only while waiting for the lease; once fn runs, opts.signal reaches fn
  // through its signal, and the lease is released when fn settles.
  const session = new AbortController();
  const abortWait = () => session.abort(opts.signal?.reason);
  opts.signal?.addEventListener("abort", abortWait, { once: true });
  const requests = new Queue<{ msg: { case: "acquire" | "release"; value: unknown } }>();
  requests.push({ msg: { case: "acquire", value: spec.acquire } });
  const responses = spec.open(requests, session.signal)[Symbol.asyncIterator]();

  try {
    // The first answer comes after the wait at most: bound it, so that a
    // frozen sidecar is an error, not a hang.
    const bound = acquireBound(client, opts);
    let first: IteratorResult<{ event: E }>;
    try {
      first = await withTimeout(responses.next(), bound, () => {
        session.abort();
        return makeError({
          code: Code.DeadlineExceeded,
          message: `no answer from the sidecar at ${client.addr} to ${rpc} within ${bound} ms (is it running? frozen?)`,
        });
      });
    } catch (e) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw describeCallError(fromError(e), client.addr, undefined, false);
    } finally {
      opts.signal?.removeEventListener("abort", abortWait);
    }
    const grantedAt = performance.now();
    if (opts.signal?.aborted) throw opts.signal.reason; // aborted as the answer came
    if (first.done) {
      throw makeError({ code: Code.Unavailable, message: `${rpc} session for ${JSON.stringify(key)} ended without an answer` });
    }
    const ev = first.value.event as HoldEvent<unknown, unknown>;
    if (ev.case === "notAcquired") {
      throw spec.notAcquired(ev.value as EventValue<E, "notAcquired">);
    }
    if (ev.case !== "acquired") {
      throw makeError({ code: Code.Internal, message: `unexpected first ${rpc} event ${String(ev.case)}` });
    }

    const lostCtl = new AbortController();
    let lost: LeaseLostError | undefined;
    let fnDone = false;
    // released: the sidecar confirmed the release; ended: the session ended
    // after fn settled without that confirmation; abandoned: we stopped
    // waiting for it and cancelled the stream.
    let released = false;
    let ended: unknown;
    let abandoned = false;
    const markLost = (err: LeaseLostError) => {
      if (lost) return;
      lost = err;
      lostCtl.abort(err);
    };

    const clock = new LocalDeadline(ttlMs, () => {
      if (!fnDone) markLost(overdueError(key, ttlMs, clock.renewedAt, what));
    });
    const lease = spec.lease(ev.value as EventValue<E, "acquired">, grantedAt);
    const confirmed = (t: number) => {
      clock.confirm(t);
      lease.renewedAt = clock.renewedAt;
      lease.deadline = clock.deadline;
    };
    confirmed(grantedAt);

    // The session's only reader, until the stream ends.
    const reader = (async () => {
      try {
        for (;;) {
          const r = await responses.next();
          if (r.done) {
            if (released) return;
            if (fnDone) {
              ended = new Error(`the ${rpc} session ended without confirming the release`);
              return;
            }
            markLost(
              new LeaseLostError({
                code: Code.FailedPrecondition,
                reason: "LEASE_LOST",
                lostReason: LostReason.STREAM_ENDED,
                message: `${rpc} session on ${JSON.stringify(key)} ended without a release`,
              }),
            );
            return;
          }
          const e = r.value.event as HoldEvent<unknown, unknown>;
          if (e.case === "renewed") {
            if (e.value.expireTime) lease.expireTime = timestampDate(e.value.expireTime);
            confirmed(performance.now());
          } else if (e.case === "released") {
            released = true;
          } else if (e.case === "lost") {
            const why = spec.lostReason(e.value.reason)?.replace(/^REASON_/, "") ?? String(e.value.reason);
            markLost(
              new LeaseLostError({
                code: Code.FailedPrecondition,
                reason: "LEASE_LOST",
                lostReason: why,
                message: `${what} ${JSON.stringify(key)} lost (${why}): ${e.value.message}`,
              }),
            );
          }
        }
      } catch (err) {
        if (released || abandoned) return;
        const cause = fromError(err);
        if (fnDone) {
          ended = cause;
          return;
        }
        markLost(
          new LeaseLostError({
            code: Code.FailedPrecondition,
            reason: "LEASE_LOST",
            lostReason: LostReason.STREAM_ENDED,
            message: `${rpc} session on ${JSON.stringify(key)} broke: ${(cause as Error)?.message ?? String(cause)}`,
            cause,
          }),
        );
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

    // Release, and wait for the sidecar to confirm (or report the loss) at
    // most until the lease's local deadline or the client's call deadline.
    requests.push({ msg: { case: "release", value: {} } });
    requests.close();
    const confirmMs = lost ? 0 : Math.min(clock.remaining(), client.timeoutMs > 0 ? client.timeoutMs : Infinity);
    clock.stop();
    let waited = true;
    if (confirmMs > 0) {
      await withTimeout(reader, Math.ceil(confirmMs), () => {
        waited = false;
        return undefined;
      }).catch(() => undefined);
    } else if (!released) {
      waited = false;
    }
    if (!released && !lost) {
      // Unconfirmed: cancelling the stream makes the sidecar release the
      // lease when it reads it; otherwise the lease expires on its own.
      abandoned = true;
      session.abort();
    }

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
    if (!released) {
      throw new ReleaseUnconfirmedError({
        code: waited ? Code.Unavailable : Code.DeadlineExceeded,
        key,
        result,
        message: waited
          ? `the release of ${what} ${JSON.stringify(key)} was not confirmed: ${(ended as Error)?.message ?? String(ended)}; the ${what} expires on its own`
          : `the sidecar at ${client.addr} did not confirm the release of ${what} ${JSON.stringify(key)} within ${Math.ceil(confirmMs)} ms; the ${what} expires on its own`,
        cause: ended,
      });
    }
    return result as T;
  } finally {
    requests.close();
    session.abort();
  }
}

function acquireBound(client: SidecarClient, opts: { waitMs?: number; timeoutMs?: number }): number {
  if (opts.timeoutMs !== undefined) return opts.timeoutMs;
  return client.timeoutMs > 0 ? (opts.waitMs ?? 0) + client.timeoutMs : 0;
}

/** Options of acquireLock. */
export interface AcquireLockOptions {
  /** Lease TTL in ms (100 ms-24 h; the sidecar's default is 10 s). Not renewed unless you call extend(). */
  ttlMs?: number;
  /** How long to wait for a held lock in ms (0-5 min; default 0: try once). */
  waitMs?: number;
  /** Label others see as the holder. */
  owner?: string;
  /** Bound of the acquire call, wait included, in ms. Default waitMs + the client's timeoutMs. */
  timeoutMs?: number;
  /** Aborting it ends the wait. */
  signal?: AbortSignal;
}

/**
 * Takes the lock `key` and returns its handle (like node-redlock's
 * `acquire`): the lease lives for ttlMs unless extended, and nothing renews
 * it in the background (withLock does). Rejects with NotAcquiredError when
 * the wait ends without the lock, with DeadlineExceededError when no answer
 * came within opts.timeoutMs (default waitMs + the client's timeoutMs).
 */
export async function acquireLock(client: SidecarClient, key: string, opts: AcquireLockOptions = {}): Promise<Lock> {
  const ttlMs = opts.ttlMs ?? DEFAULT_LOCK_TTL_MS;
  const res = await client.lock.acquireLock(
    {
      key,
      owner: opts.owner ?? "",
      ttl: opts.ttlMs !== undefined ? durationFromMs(opts.ttlMs) : undefined,
      waitTimeout: opts.waitMs !== undefined ? durationFromMs(opts.waitMs) : undefined,
    },
    { timeoutMs: acquireBound(client, opts), signal: opts.signal },
  );
  const t = performance.now();
  if (!res.acquired || !res.lease) {
    throw new NotAcquiredError(key, res.holder?.owner ?? "", res.holder?.fencingToken ?? 0n);
  }
  return new Lock(client, res.lease.key, res.lease.leaseId, res.lease.fencingToken, res.lease.owner, ttlMs, res.lease.expireTime ? timestampDate(res.lease.expireTime) : undefined, t);
}

/**
 * A held lock, from acquireLock. The lease is held until release(), or
 * until its local deadline passes without extend(): then it is lost,
 * `signal` aborts with a LeaseLostError (lostReason RENEWAL_OVERDUE) and
 * locked() is false. The deadline is t + ttl - max(ttl/10, 100 ms), t being
 * when the grant or the last extension was confirmed (monotonic clock).
 */
export class Lock {
  /** Aborts with a LeaseLostError when the lease is lost (never on release()). */
  readonly signal: AbortSignal;
  private readonly lostCtl = new AbortController();
  private readonly clock: LocalDeadline;
  private lost: LeaseLostError | undefined;
  private releasing: Promise<void> | undefined;
  private released = false;
  private expire: Date;
  private ttl: number;

  /** @internal Use acquireLock. */
  constructor(
    private readonly client: SidecarClient,
    readonly key: string,
    private readonly leaseId: string,
    /** Strictly increasing per key across every grant: pass it to the resource the lock protects. */
    readonly fencingToken: bigint,
    /** The owner label of the lease. */
    readonly owner: string,
    ttlMs: number,
    expireTime: Date | undefined,
    grantedAt: number,
  ) {
    this.signal = this.lostCtl.signal;
    this.ttl = ttlMs;
    this.expire = expireTime ?? new Date(Date.now() + ttlMs);
    this.clock = new LocalDeadline(ttlMs, () => this.markLost(overdueError(key, this.ttl, this.clock.renewedAt)));
    this.clock.confirm(grantedAt);
  }

  /** The TTL of the last grant or extension, in ms. */
  get ttlMs(): number {
    return this.ttl;
  }

  /** When the lease expires in the store, by the sidecar's clock. */
  get expireTime(): Date {
    return this.expire;
  }

  /** performance.now() of the last grant or extension confirmation. */
  get renewedAt(): number {
    return this.clock.renewedAt;
  }

  /** performance.now() at which the lease is lost unless extended first. */
  get deadline(): number {
    return this.clock.deadline;
  }

  /** Milliseconds left until the local deadline while locked(), else 0. */
  remainingMs(): number {
    return this.locked() ? this.clock.remaining() : 0;
  }

  /** True while this handle holds the lease: not released, not lost, local deadline not passed. */
  locked(): boolean {
    return !this.released && !this.releasing && !this.lost && performance.now() < this.clock.deadline;
  }

  /**
   * Extends the lease to ttlMs (default: the last TTL) from now, as the
   * sidecar's RenewLock, and moves the local deadline. Rejects with
   * LeaseLostError when the lease was lost (here or in the store) or the
   * local deadline passed before the sidecar confirmed (the call is bounded
   * by it); other errors (e.g. SidecarUnreachableError) leave the lease as
   * it was, held until its deadline.
   */
  async extend(ttlMs: number = this.ttl): Promise<void> {
    this.checkHeld("extend");
    const remaining = this.clock.remaining();
    const byDeadline = this.client.timeoutMs <= 0 || remaining <= this.client.timeoutMs;
    let res;
    try {
      res = await this.client.lock.renewLock(
        { key: this.key, leaseId: this.leaseId, ttl: durationFromMs(ttlMs) },
        { timeoutMs: Math.max(1, Math.ceil(byDeadline ? remaining : this.client.timeoutMs)) },
      );
    } catch (e) {
      if (e instanceof LeaseLostError) throw this.markLost(e);
      if (this.lost) throw this.lost;
      // No confirmation before the local deadline: the lease is over.
      if (performance.now() >= this.clock.deadline || (byDeadline && e instanceof DeadlineExceededError)) {
        throw this.markLost(overdueError(this.key, this.ttl, this.clock.renewedAt));
      }
      throw e;
    }
    const t = performance.now();
    if (this.lost) throw this.lost; // the deadline passed as the answer came
    this.ttl = ttlMs;
    if (res.expireTime) this.expire = timestampDate(res.expireTime);
    this.clock.confirm(t, ttlMs);
  }

  /**
   * Releases the lock (ReleaseLock). Resolves once the sidecar confirmed
   * (again at once after that). Rejects with LeaseLostError when the lease
   * was lost before (the critical section may have run without exclusion:
   * the caller must know); with ReleaseUnconfirmedError when no
   * confirmation came before the lease's local deadline or the client's
   * timeoutMs, whichever is first (the lock then expires on its own).
   */
  release(): Promise<void> {
    if (this.released) return Promise.resolve();
    if (this.lost) return Promise.reject(this.lost);
    if (!this.releasing) {
      if (performance.now() >= this.clock.deadline) {
        return Promise.reject(this.markLost(overdueError(this.key, this.ttl, this.clock.renewedAt)));
      }
      this.releasing = this.doRelease();
    }
    return this.releasing;
  }

  private async doRelease(): Promise<void> {
    // The critical section is over: no loss to signal from now on.
    this.clock.stop();
    const bound = Math.ceil(Math.min(this.clock.remaining(), this.client.timeoutMs > 0 ? this.client.timeoutMs : Infinity));
    try {
      await this.client.lock.releaseLock({ key: this.key, leaseId: this.leaseId }, { timeoutMs: Math.max(1, bound) });
      this.released = true;
    } catch (e) {
      if (e instanceof LeaseLostError) throw this.markLost(e);
      throw new ReleaseUnconfirmedError({
        code: e instanceof SidecarError ? e.code : Code.Unknown,
        key: this.key,
        message: `the release of ${JSON.stringify(this.key)} was not confirmed within ${bound} ms (${(e as Error)?.message ?? String(e)}); the lock expires on its own`,
        cause: e,
      });
    }
  }

  private checkHeld(what: string): void {
    if (this.lost) throw this.lost;
    if (this.released || this.releasing) throw new Error(`resilience: ${what} of lock ${JSON.stringify(this.key)} after release()`);
    if (performance.now() >= this.clock.deadline) throw this.markLost(overdueError(this.key, this.ttl, this.clock.renewedAt));
  }

  private markLost(err: LeaseLostError): LeaseLostError {
    if (this.lost) return this.lost;
    this.lost = err;
    this.clock.stop();
    this.lostCtl.abort(this.lost);
    return this.lost;
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
