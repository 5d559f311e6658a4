// idempotent: run an operation at most once per key, as Idempotent in
// clients/go/resilience/idempotent.go.

import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";

import type { SidecarClient } from "./client.js";
import { LeaseLostError, makeError, SidecarError } from "./errors.js";
import { CheckOrRecordIdempotencyResponse_Outcome } from "./gen/resilience/v1/idempotency_pb.js";

/**
 * What an operation run through idempotent returns to every caller of its
 * key: bytes (e.g. a response body) and a small string map (e.g.
 * {status: "201"}).
 */
export interface IdempotentResult {
  data: Uint8Array;
  metadata: Record<string, string>;
}

/** What fn may return: data as bytes or a string (stored as UTF-8). */
export interface IdempotentResultInit {
  data?: Uint8Array | string;
  metadata?: Record<string, string>;
}

/** One run of the operation, as fn sees it. */
export interface Execution {
  key: string;
  /**
   * 1 for the first run; more when this run takes over from an executor
   * whose lease expired (it died or was too slow).
   */
  attempt: number;
  /** The last checkpoint of an earlier attempt ("" when none): resume after that phase. */
  recoveryPoint: string;
  recoveryData: Uint8Array;
  /** The caller's signal (opts.signal), if any. */
  signal: AbortSignal | undefined;
  /**
   * Records that the phase recoveryPoint (1-512 bytes) finished, with data
   * the next phases need (at most 64 KiB), and extends the lease. A
   * LeaseLostError means another run has taken over: stop.
   */
  checkpoint(recoveryPoint: string, data?: Uint8Array): Promise<void>;
}

export interface IdempotentOptions {
  /**
   * How long the sidecar waits for this process to finish fn before another
   * caller may take over, in ms (1 s-1 h; the sidecar's default is 30 s).
   * Choose it longer than fn takes; checkpoint() extends it.
   */
  leaseTtlMs?: number;
  /** How long the result is kept for duplicates, in ms (1 s-720 h; default 24 h). */
  retentionMs?: number;
  /**
   * How long one call to the sidecar waits for a duplicate that is running
   * fn, in ms (0-5 min, default 5 s, kept under the client's timeoutMs).
   * idempotent calls again until opts.signal aborts.
   */
  waitMs?: number;
  /** How many times a call failing with UNAVAILABLE is retried after the sidecar's hint (default 3). */
  unavailableRetries?: number;
  /** Aborting it stops the waiting (fn sees it as Execution.signal). */
  signal?: AbortSignal;
}

/**
 * A fingerprint of a request for idempotent: "sha256:" and the hex SHA-256
 * of the request in a canonical form (e.g. the body as received), so a
 * retry of the same request has the same fingerprint and a different
 * request reusing the key does not.
 */
export function fingerprint(request: Uint8Array | string): string {
  return "sha256:" + createHash("sha256").update(request).digest("hex");
}

/** Bound of the complete and release calls made after fn settled. */
const CLEANUP_TIMEOUT_MS = 10_000;

/**
 * Runs fn at most once for key across every caller of every sidecar
 * sharing the store, and resolves every caller with its result.
 *
 * The first caller (outcome STARTED) runs fn and records its result;
 * callers that find the key in progress wait for it (and ask again until
 * opts.signal aborts); callers that find it completed get the stored result
 * without running fn. When fn throws, the key is released so a later call
 * runs fn again, and fn's error is rethrown. If the process running fn dies,
 * the key is taken over by the next caller once the lease expires
 * (leaseTtlMs), which runs fn with attempt > 1 and the last checkpoint.
 *
 * A key already used with another fingerprint rejects with
 * IdempotencyKeyMismatchError. If fn succeeded but its lease was taken over
 * meanwhile, it rejects with a LeaseLostError whose `result` is fn's
 * result: the operation may have run twice.
 */
export async function idempotent(
  client: SidecarClient,
  key: string,
  fingerprint: string,
  fn: (exec: Execution) => Promise<IdempotentResultInit> | IdempotentResultInit,
  opts: IdempotentOptions = {},
): Promise<IdempotentResult> {
  const retries = opts.unavailableRetries ?? 3;
  // Keep the sidecar's wait inside the call's deadline, so that it answers
  // IN_PROGRESS before the call times out.
  let waitMs = opts.waitMs ?? 5_000;
  if (client.timeoutMs > 0) waitMs = Math.min(waitMs, Math.floor(client.timeoutMs * 0.8));
  waitMs = Math.max(0, Math.floor(waitMs));

  for (;;) {
    opts.signal?.throwIfAborted();
    const resp = await retryUnavailable(opts.signal, retries, () =>
      client.idempotency.checkOrRecordIdempotency(
        {
          key,
          fingerprint,
          waitTimeout: durationFromMs(waitMs),
          leaseTtl: opts.leaseTtlMs ? durationFromMs(opts.leaseTtlMs) : undefined,
          retention: opts.retentionMs ? durationFromMs(opts.retentionMs) : undefined,
        },
        { signal: opts.signal },
      ),
    );
    switch (resp.outcome) {
      case CheckOrRecordIdempotencyResponse_Outcome.COMPLETED:
        return { data: resp.result?.data ?? new Uint8Array(), metadata: { ...(resp.result?.metadata ?? {}) } };
      case CheckOrRecordIdempotencyResponse_Outcome.STARTED:
        return run(client, key, resp.leaseId, resp.attempt, resp.checkpoint?.recoveryPoint ?? "", resp.checkpoint?.data ?? new Uint8Array(), fn, opts, retries);
      case CheckOrRecordIdempotencyResponse_Outcome.IN_PROGRESS:
        if (waitMs > 0) continue; // the sidecar already waited
        await sleep(resp.retryAfter ? durationMs(resp.retryAfter) : 100, undefined, { signal: opts.signal });
        continue;
      default:
        throw makeError({ code: Code.Internal, message: `unexpected idempotency outcome ${resp.outcome}` });
    }
  }
}


/**
 * idempotent for JSON values: fn returns any JSON-serializable value (not
 * a bigint), stored as its UTF-8 JSON text with metadata
 * {"content-type": "application/json"}; every caller of the key resolves
 * with that value parsed again (undefined when fn returned undefined).
 * Everything else is as idempotent: fn runs at most once per key, a
 * duplicate gets the stored value, fn's error releases the key.
 */
export async function idempotentJson<T>(
  client: SidecarClient,
  key: string,
  fingerprint: string,
  fn: (exec: Execution) => Promise<T> | T,
  opts: IdempotentOptions = {},
): Promise<T> {
  const r = await idempotent(
    client,
    key,
    fingerprint,
    async (exec) => {
      const value = await fn(exec);
      const text = value === undefined ? "" : JSON.stringify(value);
      return { data: text ?? "", metadata: { "content-type": JSON_CONTENT_TYPE } };
    },
    opts,
  );
  if (r.data.length === 0) return undefined as T;
  return JSON.parse(new TextDecoder().decode(r.data)) as T;
}

const JSON_CONTENT_TYPE = "application/json";

async function run(
  client: SidecarClient,
  key: string,
  leaseId: string,
  attempt: number,
  recoveryPoint: string,
  recoveryData: Uint8Array,
  fn: (exec: Execution) => Promise<IdempotentResultInit> | IdempotentResultInit,
  opts: IdempotentOptions,
  retries: number,
): Promise<IdempotentResult> {
  const exec: Execution = {
    key,
    attempt,
    recoveryPoint,
    recoveryData,
    signal: opts.signal,
    checkpoint: async (point, data) => {
      await client.idempotency.checkpointIdempotency({ key, leaseId, recoveryPoint: point, data: data ?? new Uint8Array() }, { signal: opts.signal });
    },
  };
  let init: IdempotentResultInit;
  try {
    init = await fn(exec);
  } catch (err) {
    // The operation failed and did not happen: give the key back so a
    // retry runs it. A release that fails frees itself when the lease
    // expires; a LEASE_LOST one means the key is not ours any more anyway.
    await retryUnavailable(undefined, retries, () =>
      client.idempotency.releaseIdempotency({ key, leaseId }, { timeoutMs: CLEANUP_TIMEOUT_MS }),
    ).catch(() => undefined);
    throw err;
  }
  const result: IdempotentResult = {
    data: typeof init?.data === "string" ? new TextEncoder().encode(init.data) : (init?.data ?? new Uint8Array()),
    metadata: { ...(init?.metadata ?? {}) },
  };
  try {
    // Sent even if opts.signal aborted meanwhile: fn ran, its result must be recorded.
    await retryUnavailable(undefined, retries, () =>
      client.idempotency.completeIdempotency({ key, leaseId, result }, { timeoutMs: CLEANUP_TIMEOUT_MS }),
    );
  } catch (err) {
    if (err instanceof LeaseLostError) {
      throw Object.assign(
        new LeaseLostError({
          code: err.code,
          reason: err.reason,
          message: `${JSON.stringify(key)} ran but its lease was taken over; it may have run twice: ${err.rawMessage}`,
          cause: err,
        }),
        { result },
      );
    }
    if (err instanceof SidecarError) {
      throw Object.assign(
        makeError({
          code: err.code,
          reason: err.reason,
          retryDelayMs: err.retryDelayMs,
          violations: err.violations,
          message: `${JSON.stringify(key)} ran but its result was not recorded: ${err.rawMessage}`,
          cause: err,
        }),
        { result },
      );
    }
    throw err;
  }
  return result;
}

/**
 * Runs call, retrying UNAVAILABLE up to retries times after the sidecar's
 * RetryInfo delay (100 ms when none). Internal: shared with the HTTP
 * middleware, not exported from the package root.
 */
export async function retryUnavailable<T>(signal: AbortSignal | undefined, retries: number, call: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await call();
    } catch (err) {
      if (!(err instanceof SidecarError) || err.code !== Code.Unavailable || i >= retries || signal?.aborted) {
        if (signal?.aborted) throw signal.reason;
        throw err;
      }
      await sleep(err.retryDelayMs ?? 100, undefined, { signal }).catch(() => {
        throw err;
      });
    }
  }
}
