// Circuit breakers: guard (a function under a sidecar breaker, two-step
// AllowCall/ReportCall, as Guard in clients/go/resilience/guard.go),
// CircuitBreaker (opossum's `new CircuitBreaker(action).fire(...args)`),
// and executeCall (an HTTP call to a configured upstream made by the
// sidecar, under the upstream's breaker, with its retries).

import { performance } from "node:perf_hooks";

import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";

import type { SidecarClient } from "./client.js";
import { BreakerOpenError } from "./errors.js";
import { BreakerState, CallOutcome } from "./gen/resilience/v1/breaker_pb.js";
import type { AllowCallResponse, Breaker, HttpHeader } from "./gen/resilience/v1/breaker_pb.js";

/** Bound of guard's ReportCall, sent even after the caller's signal aborted so the outcome is not lost. */
const REPORT_TIMEOUT_MS = 5_000;

export interface GuardOptions {
  /**
   * How long the sidecar waits for the outcome before it counts the call as
   * failed, in ms (1 ms-10 min; default the sidecar's, 60 s). Choose it
   * longer than the function runs.
   */
  permitTtlMs?: number;
  /**
   * How an outcome is reported (`err` is undefined when the function
   * resolved). The default: resolved is SUCCESS; a rejection after
   * opts.signal aborted is IGNORED (the caller gave up, the dependency is
   * not to blame); any other rejection is FAILURE. Return IGNORED or SUCCESS
   * for errors that say nothing about the dependency's health (invalid
   * input, not found), like opossum's errorFilter.
   */
  outcome?: (err: unknown, failed: boolean) => CallOutcome;
  /** The caller's signal: passed to the function; aborting it before AllowCall answers rejects with its reason. */
  signal?: AbortSignal;
}

/**
 * Runs fn under the sidecar's circuit breaker `breaker`: asks AllowCall,
 * runs fn when the call is allowed, then reports fn's outcome and duration
 * with ReportCall. Resolves or rejects as fn did.
 *
 * When the breaker refuses the call, fn does not run and guard rejects with
 * a BreakerOpenError (UNAVAILABLE/BREAKER_OPEN) whose retryDelayMs says
 * when asking again makes sense and whose metadata names the breaker and
 * its state. An AllowCall failure rejects as it is (a SidecarError). A
 * failed ReportCall does not change guard's result: fn already ran, and the
 * sidecar counts a permit never reported as a failure when it expires.
 */
export async function guard<T>(
  client: SidecarClient,
  breaker: string,
  fn: (signal: AbortSignal | undefined) => Promise<T> | T,
  opts: GuardOptions = {},
): Promise<T> {
  const allowed = await client.breaker.allowCall(
    { breaker, permitTtl: opts.permitTtlMs !== undefined ? durationFromMs(opts.permitTtlMs) : undefined },
    { signal: opts.signal },
  );
  if (!allowed.allowed) throw breakerOpen(breaker, allowed);

  const start = performance.now();
  const outcome = opts.outcome ?? defaultOutcome(opts.signal);
  const report = async (o: CallOutcome) => {
    try {
      await client.breaker.reportCall(
        { permitId: allowed.permitId, outcome: o, duration: durationFromMs(Math.round(performance.now() - start)) },
        { timeoutMs: REPORT_TIMEOUT_MS },
      );
    } catch {
      // Dropped on purpose: see the doc comment.
    }
  };
  let result: T;
  try {
    result = await fn(opts.signal);
  } catch (err) {
    await report(outcome(err, true));
    throw err;
  }
  await report(outcome(undefined, false));
  return result;
}

function defaultOutcome(signal: AbortSignal | undefined): (err: unknown, failed: boolean) => CallOutcome {
  return (_err, failed) => {
    if (!failed) return CallOutcome.SUCCESS;
    if (signal?.aborted) return CallOutcome.IGNORED;
    return CallOutcome.FAILURE;
  };
}

/** The BreakerOpenError of a refused AllowCall: the same UNAVAILABLE/BREAKER_OPEN with a retry delay that ExecuteCall returns. */
function breakerOpen(breaker: string, r: AllowCallResponse): BreakerOpenError {
  const state = r.state === BreakerState.HALF_OPEN ? "half-open" : "open";
  return new BreakerOpenError({
    code: Code.Unavailable,
    reason: "BREAKER_OPEN",
    metadata: { breaker, state },
    retryDelayMs: r.retryAfter ? durationMs(r.retryAfter) : undefined,
    message: `breaker ${JSON.stringify(breaker)} is ${state === "open" ? "open" : "half-open with every probe slot taken"}: the call was not made`,
  });
}

/**
 * A function under a sidecar circuit breaker, like opossum's
 * `new CircuitBreaker(action, options)`: `fire(...args)` runs the action
 * through guard. The breaker's policy and state live in the sidecar (its
 * config's `breakers` section; shared breakers are the same for every
 * replica), not in this object.
 */
export class CircuitBreaker<A extends unknown[], R> {
  constructor(
    private readonly client: SidecarClient,
    /** The breaker's name in the sidecar. */
    readonly name: string,
    private readonly action: (...args: A) => Promise<R> | R,
    private readonly opts: GuardOptions = {},
  ) {}

  /**
   * Runs the action with args when the breaker allows it and reports the
   * outcome; rejects with BreakerOpenError (retryDelayMs) without running
   * it when the breaker is open.
   */
  fire(...args: A): Promise<R> {
    return guard(this.client, this.name, () => this.action(...args), this.opts);
  }

  /** The breaker as the sidecar sees it: state, policy, counts (GetBreaker). */
  async status(): Promise<Breaker | undefined> {
    return (await this.client.breaker.getBreaker({ breaker: this.name })).breaker;
  }
}

/** A request for executeCall. */
export interface UpstreamRequest {
  /** GET, HEAD, POST (default), PUT, PATCH, DELETE or OPTIONS. */
  method?: string;
  /** Escaped path starting with "/", appended to the upstream's base URL. */
  path?: string;
  /** Escaped query string without "?". */
  query?: string;
  /** Request headers (repeat a name with an array of pairs). Host, Content-Length, hop-by-hop and Idempotency-Key are refused. */
  headers?: Record<string, string> | Array<[string, string]>;
  /** The body; a string is sent as UTF-8. */
  body?: Uint8Array | string;
  /**
   * Makes retries safe for any method: sent as Idempotency-Key on every
   * attempt (without it only GET, HEAD, PUT, DELETE and OPTIONS are retried).
   */
  idempotencyKey?: string;
  /**
   * Bound of the whole call, attempts and backoffs, in ms (the sidecar's
   * default is 30 s, at most 10 min). The gRPC deadline is this plus 1 s
   * so that the sidecar's own answer (the last response, or
   * UPSTREAM_TIMEOUT) arrives; default the client's timeoutMs.
   */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** An upstream's answer through executeCall: any HTTP status is a response, not an error. */
export interface UpstreamResponse {
  status: number;
  /** 2xx. */
  ok: boolean;
  /** The response headers in order, repeated names kept. */
  headers: HttpHeader[];
  body: Uint8Array;
  /** HTTP attempts made (retries included). */
  attempts: number;
  /** The upstream breaker's state after the last attempt. */
  breakerState: BreakerState;
  /** The first value of a header (case-insensitive), undefined when absent. */
  header(name: string): string | undefined;
  /** The body as UTF-8 text. */
  text(): string;
  /** The body parsed as JSON. */
  json<T = unknown>(): T;
}

/**
 * Calls the upstream `upstream` (a name of the sidecar config's `upstreams`)
 * through the sidecar's ExecuteCall: under the upstream's breaker, with its
 * retries and timeouts. Resolves with the response whatever its HTTP status.
 * Rejects with BreakerOpenError (retryDelayMs) when the breaker refused the
 * call, UpstreamUnknownError for an unknown upstream or a path leaving its
 * base URL, UpstreamUnavailableError when no connection could be made,
 * UpstreamTimeoutError when no response came in time (it may have been
 * processed), LimitExceededError for a response body too large.
 */
export async function executeCall(client: SidecarClient, upstream: string, req: UpstreamRequest = {}): Promise<UpstreamResponse> {
  const headers = Array.isArray(req.headers) ? req.headers : Object.entries(req.headers ?? {});
  const res = await client.breaker.executeCall(
    {
      upstream,
      method: req.method ?? "",
      path: req.path ?? "",
      query: req.query ?? "",
      headers: headers.map(([name, value]) => ({ name, value })),
      body: typeof req.body === "string" ? new TextEncoder().encode(req.body) : (req.body ?? new Uint8Array()),
      timeout: req.timeoutMs !== undefined ? durationFromMs(req.timeoutMs) : undefined,
      idempotencyKey: req.idempotencyKey ?? "",
    },
    { timeoutMs: req.timeoutMs !== undefined ? req.timeoutMs + 1_000 : undefined, signal: req.signal },
  );
  const body = res.body;
  return {
    status: res.status,
    ok: res.status >= 200 && res.status < 300,
    headers: res.headers,
    body,
    attempts: res.attempts,
    breakerState: res.breakerState,
    header: (name) => res.headers.find((h) => h.name.toLowerCase() === name.toLowerCase())?.value,
    text: () => new TextDecoder().decode(body),
    json: <T>() => JSON.parse(new TextDecoder().decode(body)) as T,
  };
}
