// Sagas: startSaga and runSaga, with Saga.step (record the step and its
// compensation write-ahead, run it, abort the saga when it fails) and
// Saga.addCompensation, Temporal-style; as StartSaga/Step in
// clients/go/resilience/saga.go. The compensations are HTTP calls the
// sidecar makes, newest first, to upstreams of its config.

import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";

import type { SidecarClient } from "./client.js";
import type { Saga as SagaRecord, CompensationSchema } from "./gen/resilience/v1/saga_pb.js";

/**
 * The HTTP call that undoes a step, made by the sidecar (with retries and
 * the header `Idempotency-Key: <sagaId>:<step>`) to an upstream named in
 * its config: it must be idempotent and succeed (2xx) when there is nothing
 * to undo.
 */
export interface CompensationInit {
  /** A name of the sidecar config's `upstreams`. */
  upstream: string;
  /** GET, HEAD, POST (default), PUT, PATCH, DELETE or OPTIONS. */
  method?: string;
  /** Escaped path starting with "/", appended to the upstream's base URL. */
  path?: string;
  /** Escaped query string without "?". */
  query?: string;
  headers?: Record<string, string> | Array<[string, string]>;
  /** The body; a string is sent as UTF-8. */
  body?: Uint8Array | string;
}

export interface StartSagaOptions {
  /**
   * After this long without complete() the sidecar compensates the saga,
   * in ms (100 ms-720 h; default the sidecar's, 1 h): the bound of a crashed
   * orchestrator.
   */
  timeoutMs?: number;
  /** Labels shown by GetSaga and ListSagas (at most 32). */
  metadata?: Record<string, string>;
}

function compensation(c: CompensationInit): MessageInitShape<typeof CompensationSchema> {
  const headers = Array.isArray(c.headers) ? c.headers : Object.entries(c.headers ?? {});
  return {
    upstream: c.upstream,
    method: c.method ?? "",
    path: c.path ?? "",
    query: c.query ?? "",
    headers: headers.map(([name, value]) => ({ name, value })),
    body: typeof c.body === "string" ? new TextEncoder().encode(c.body) : (c.body ?? new Uint8Array()),
  };
}

/**
 * Makes reason acceptable to the sidecar: valid UTF-8 without control
 * characters, at most 512 bytes.
 */
function sagaReason(reason: string): string {
  const chars = [
    ...reason
      .replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, " ") // lone surrogates
      .replace(/[\u0000-\u001f\u007f-\u009f]/g, " "),
  ].slice(0, 512);
  const enc = new TextEncoder();
  while (enc.encode(chars.join("")).length > 512) chars.pop();
  return chars.join("");
}

/**
 * A saga this process orchestrates through the sidecar's SagaService.
 * Record each step with its compensation before doing it (step() does
 * both), then complete(); when a step fails the sidecar undoes the recorded
 * steps, newest first, by calling their compensations. If this process dies
 * instead, the sidecar compensates the saga after its timeout. Steps run
 * one at a time.
 */
export class Saga {
  /** @internal Use startSaga or runSaga. */
  constructor(
    private readonly client: SidecarClient,
    /** The saga's id. */
    readonly id: string,
  ) {}

  /**
   * Records the step `name` with its compensation (write-ahead), then runs
   * fn. When fn throws, aborts the saga (the sidecar then compensates every
   * recorded step, this one included, newest first: fn may have done part of
   * its work) and rethrows fn's error; if the abort fails too, rejects with
   * an AggregateError of both (the sidecar still compensates at the saga's
   * timeout). When the sidecar refuses to record the step
   * (SagaStateConflictError: the saga timed out or was aborted), fn does not
   * run. Recording the same step with the same compensation again (a retry)
   * is a no-op.
   */
  async step<T>(name: string, comp: CompensationInit, fn: () => Promise<T> | T): Promise<T> {
    await this.addCompensation(name, comp);
    try {
      return await fn();
    } catch (err) {
      try {
        await this.abort(`step ${JSON.stringify(name)} failed: ${(err as Error)?.message ?? String(err)}`);
      } catch (abortErr) {
        throw new AggregateError([err, abortErr], `resilience: step ${JSON.stringify(name)} of saga ${JSON.stringify(this.id)} failed, and so did aborting the saga`);
      }
      throw err;
    }
  }

  /**
   * Records the step `name` and its compensation without running anything
   * (Temporal's saga.addCompensation): call it before doing the step
   * yourself. Resolves with the step's position (from 1). Rejects with
   * SagaStateConflictError when the saga is not running any more or the
   * step was recorded with another compensation: then do not do the step.
   */
  async addCompensation(name: string, comp: CompensationInit): Promise<number> {
    const r = await this.client.saga.recordStep({ sagaId: this.id, step: name, compensation: compensation(comp) });
    return r.index;
  }

  /**
   * Ends the saga successfully: nothing is compensated. Rejects with
   * SagaStateConflictError when the saga timed out or was aborted meanwhile
   * (it is being, or was, compensated).
   */
  async complete(): Promise<SagaRecord | undefined> {
    return (await this.client.saga.completeSaga({ sagaId: this.id })).saga;
  }

  /**
   * Makes the sidecar compensate the recorded steps, newest first, in the
   * background (get() shows the progress). reason is kept in the saga log
   * (cut to 512 bytes, control characters replaced).
   */
  async abort(reason: string): Promise<SagaRecord | undefined> {
    return (await this.client.saga.abortSaga({ sagaId: this.id, reason: sagaReason(reason) })).saga;
  }

  /** The saga with its steps and each compensation's status (GetSaga). */
  async get(): Promise<SagaRecord> {
    const s = (await this.client.saga.getSaga({ sagaId: this.id })).saga;
    if (!s) throw new Error(`resilience: GetSaga ${JSON.stringify(this.id)} returned no saga`);
    return s;
  }
}

/**
 * Starts the saga `id` of kind `name` (or resumes it: starting is
 * idempotent on id and name). Rejects with SagaStateConflictError when the
 * id is taken by a saga of another name.
 */
export async function startSaga(client: SidecarClient, id: string, name: string, opts: StartSagaOptions = {}): Promise<Saga> {
  await client.saga.startSaga({
    sagaId: id,
    name,
    timeout: opts.timeoutMs !== undefined ? durationFromMs(opts.timeoutMs) : undefined,
    metadata: opts.metadata ?? {},
  });
  return new Saga(client, id);
}

/**
 * Runs a saga as a workflow: starts it, runs fn with the Saga (fn calls
 * saga.step for each step), completes it when fn resolves, and resolves
 * with fn's result. When fn throws, the saga is aborted (if a failing step
 * has not done it already) and fn's error rethrown: the sidecar runs the
 * compensations of the recorded steps newest first (should that abort
 * fail, the sidecar compensates the saga at its timeout).
 */
export async function runSaga<T>(
  client: SidecarClient,
  id: string,
  name: string,
  fn: (saga: Saga) => Promise<T> | T,
  opts: StartSagaOptions = {},
): Promise<T> {
  const saga = await startSaga(client, id, name, opts);
  let result: T;
  try {
    result = await fn(saga);
  } catch (err) {
    // Aborting twice is harmless (idempotent on a compensating saga).
    await saga.abort(`saga failed: ${(err as Error)?.message ?? String(err)}`).catch(() => undefined);
    throw err;
  }
  await saga.complete();
  return result;
}
