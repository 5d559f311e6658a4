// createClient: the connection to the sidecar, as clients/go/resilience/dial.go
// makes it for Go: address and token from the options or the environment,
// a default deadline on every unary call, typed errors.

import { readFileSync } from "node:fs";
import * as net from "node:net";

import type { DescService } from "@bufbuild/protobuf";
import { Code, createClient as createConnectClient } from "@connectrpc/connect";
import type { CallOptions, Client, Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { BreakerService } from "./gen/resilience/v1/breaker_pb.js";
import { SagaService } from "./gen/resilience/v1/saga_pb.js";
import { ClockService } from "./gen/resilience/v1/clock_pb.js";
import { EventService } from "./gen/resilience/v1/events_pb.js";
import { IdempotencyService } from "./gen/resilience/v1/idempotency_pb.js";
import { LockService } from "./gen/resilience/v1/lock_pb.js";
import { RateLimitService } from "./gen/resilience/v1/ratelimit_pb.js";
import { SemaphoreService } from "./gen/resilience/v1/semaphore_pb.js";
import { fromError, makeError, SidecarError } from "./errors.js";
import { traceContextInterceptor } from "./tracing.js";

/** The sidecar address: "host:port" or "unix:///absolute/path". */
export const ENV_ADDR = "SIDECAR_ADDR";
/** The API token. */
export const ENV_TOKEN = "SIDECAR_API_TOKEN";
/** A file holding the API token (read when SIDECAR_API_TOKEN is empty). */
export const ENV_TOKEN_FILE = "SIDECAR_API_TOKEN_FILE";
/** The sidecar's default listen address. */
export const DEFAULT_ADDR = "127.0.0.1:50051";
/**
 * Bound of every unary call that sets no timeoutMs of its own, so that a
 * stopped or frozen sidecar is an error, not a hang.
 */
export const DEFAULT_TIMEOUT_MS = 10_000;

export interface ClientOptions {
  /** "host:port" or "unix:///path"; default SIDECAR_ADDR, else 127.0.0.1:50051. */
  addr?: string;
  /**
   * API token sent as `authorization: Bearer <token>`; default
   * SIDECAR_API_TOKEN, else the content of the file SIDECAR_API_TOKEN_FILE.
   */
  token?: string;
  /**
   * Default deadline of unary calls in ms (DEFAULT_TIMEOUT_MS); 0 disables.
   * A call's own `timeoutMs` option wins. HoldLock sessions have none: they
   * last as long as the lock is held.
   */
  timeoutMs?: number;
  /** Extra Connect interceptors (logging, ...). */
  interceptors?: Interceptor[];
  /**
   * Send the caller's OpenTelemetry context (W3C `traceparent` with the
   * globally configured propagator) on every call when the optional peer
   * dependency @opentelemetry/api is installed; default true.
   */
  propagateTraceContext?: boolean;
}

/** A connection to the sidecar: one typed client per service. */
export interface SidecarClient {
  readonly lock: Client<typeof LockService>;
  readonly idempotency: Client<typeof IdempotencyService>;
  readonly clock: Client<typeof ClockService>;
  readonly breaker: Client<typeof BreakerService>;
  readonly saga: Client<typeof SagaService>;
  readonly events: Client<typeof EventService>;
  readonly rateLimit: Client<typeof RateLimitService>;
  readonly semaphore: Client<typeof SemaphoreService>;
  /** The address the client talks to. */
  readonly addr: string;
  /** The default deadline of unary calls in ms (0: none). */
  readonly timeoutMs: number;
  /** Closes the HTTP/2 connection; calls in flight fail. */
  close(): void;
}

/**
 * Connects to the sidecar (lazily: the first call opens the connection).
 * The sidecar listens on localhost, so the transport is plaintext HTTP/2
 * (gRPC, h2c). Every unary call without a timeoutMs of its own gets the
 * default deadline, and every call error is a SidecarError.
 *
 * Reconnecting: the transport (Connect's Http2SessionManager) has no
 * backoff. A call made while the connection is down opens a new one at
 * once, so the first call after a restarted sidecar listens again succeeds
 * (a call while it is down fails at once with SidecarUnreachableError).
 */
export function createClient(options: ClientOptions = {}): SidecarClient {
  const addr = options.addr || process.env[ENV_ADDR] || DEFAULT_ADDR;
  const token = options.token ?? readToken();
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
    throw new RangeError(`resilience: timeoutMs must be >= 0, got ${timeoutMs}`);
  }

  const { baseUrl, socketPath } = parseAddr(addr);
  const sessionManager = new Http2SessionManager(
    baseUrl,
    // Pings only while a call is open (a HoldLock session): a sidecar that
    // stopped answering breaks the session, so withLock learns it.
    { pingIntervalMs: 10_000, pingTimeoutMs: 5_000 },
    socketPath ? { createConnection: () => net.connect(socketPath) } : {},
  );
  const interceptors: Interceptor[] = [];
  if (options.propagateTraceContext ?? true) interceptors.push(traceContextInterceptor());
  if (token) {
    interceptors.push((next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  interceptors.push(...(options.interceptors ?? []));
  const transport = createGrpcTransport({ baseUrl, sessionManager, interceptors });

  const wrap = <S extends DescService>(service: S): Client<S> => wrapClient(service, createConnectClient(service, transport), addr, timeoutMs);
  return {
    lock: wrap(LockService),
    idempotency: wrap(IdempotencyService),
    clock: wrap(ClockService),
    breaker: wrap(BreakerService),
    saga: wrap(SagaService),
    events: wrap(EventService),
    rateLimit: wrap(RateLimitService),
    semaphore: wrap(SemaphoreService),
    addr,
    timeoutMs,
    close: () => sessionManager.abort(),
  };
}

function readToken(): string {
  const token = process.env[ENV_TOKEN];
  if (token) return token;
  const file = process.env[ENV_TOKEN_FILE];
  if (!file) return "";
  try {
    return readFileSync(file, "utf8").trim();
  } catch (e) {
    throw new Error(`resilience: reading the API token from ${ENV_TOKEN_FILE}=${file}: ${(e as Error).message}`, { cause: e });
  }
}

function parseAddr(addr: string): { baseUrl: string; socketPath?: string } {
  if (addr.startsWith("unix:")) {
    // unix:///abs/path (as the sidecar's --listen takes it) or unix:rel/path
    const path = addr.startsWith("unix://") ? addr.slice("unix://".length) : addr.slice("unix:".length);
    if (!path) throw new Error(`resilience: bad sidecar address ${JSON.stringify(addr)}`);
    return { baseUrl: "http://localhost", socketPath: path };
  }
  if (addr.startsWith("http://")) return { baseUrl: addr };
  if (addr.includes("://")) {
    throw new Error(`resilience: bad sidecar address ${JSON.stringify(addr)}: want host:port or unix:///path`);
  }
  return { baseUrl: `http://${addr}` };
}

/**
 * Wraps a Connect client: unary calls get the default deadline and typed
 * errors; streaming calls are passed through (withLock and subscribe type
 * their errors).
 */
function wrapClient<S extends DescService>(service: S, raw: Client<S>, addr: string, timeoutMs: number): Client<S> {
  const out: Record<string, unknown> = {};
  const methods = raw as unknown as Record<string, (req: unknown, opts?: CallOptions) => unknown>;
  for (const m of service.methods) {
    const call = methods[m.localName]!;
    if (m.methodKind !== "unary") {
      out[m.localName] = call;
      continue;
    }
    out[m.localName] = async (req: unknown, opts?: CallOptions) => {
      let o = opts;
      if (o?.timeoutMs === undefined && timeoutMs > 0) {
        o = { ...o, timeoutMs };
      } else if (o?.timeoutMs === 0) {
        o = { ...o, timeoutMs: undefined };
      }
      try {
        return await call(req, o);
      } catch (e) {
        throw describeCallError(fromError(e), addr, o?.timeoutMs, o?.signal?.aborted ?? false);
      }
    };
  }
  return out as Client<S>;
}

/**
 * Makes transport failures say what happened: the sidecar did not answer
 * in time, or could not be reached. A call cancelled although the caller
 * did not abort it, or one Connect reports ABORTED (a reset connection),
 * lost its connection (the sidecar died): UNAVAILABLE, as grpc-go reports it. Errors the sidecar itself sent (they carry a reason)
 * are unchanged.
 */
export function describeCallError(err: unknown, addr: string, timeoutMs: number | undefined, callerAborted: boolean): unknown {
  if (!(err instanceof SidecarError) || err.reason) return err;
  // Connect reports a connection reset mid-read (ECONNRESET) as ABORTED;
  // the sidecar itself never answers ABORTED, so that is a lost connection.
  if ((err.code === Code.Canceled && !callerAborted) || err.code === Code.Aborted) {
    return makeError({
      code: Code.Unavailable,
      message: `connection to the sidecar at ${addr} lost (did it stop?): ${err.rawMessage}`,
      cause: err.cause ?? err,
    });
  }
  if (err.code === Code.DeadlineExceeded && timeoutMs) {
    return makeError({
      code: err.code,
      message: `no answer from the sidecar at ${addr} within ${timeoutMs} ms (is it running? frozen?): ${err.rawMessage}`,
      cause: err.cause ?? err,
    });
  }
  if (err.code === Code.Unavailable) {
    return makeError({
      code: err.code,
      message: `cannot reach the sidecar at ${addr} (is it running? SIDECAR_ADDR): ${err.rawMessage}`,
      retryDelayMs: err.retryDelayMs,
      cause: err.cause ?? err,
    });
  }
  return err;
}
