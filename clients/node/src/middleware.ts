// @seed-a88e5317/resilience-sidecar/middleware: an HTTP middleware that
// honours the Idempotency-Key header (as Stripe's API does) on any
// Connect-style server — Express, connect, or plain node:http through
// withIdempotency — with the sidecar's idempotency keys: the first request
// with a key runs the handler and its response (status, headers, body) is
// stored; a duplicate gets that response replayed without running the
// handler. The same rules as the Go, Python and Java middlewares (issue 21,
// "Idempotency-Key middleware: one behaviour in every language"); anchored
// on AWS Powertools' makeHandlerIdempotent (middy). It does not import
// express: it works on node:http's IncomingMessage and ServerResponse,
// which Express's req and res extend.

import { createHash } from "node:crypto";
import { STATUS_CODES, type IncomingMessage, type OutgoingHttpHeader, type OutgoingHttpHeaders, type ServerResponse } from "node:http";

import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";

import type { SidecarClient } from "./client.js";
import { SidecarError } from "./errors.js";
import { CheckOrRecordIdempotencyResponse_Outcome, type CheckOrRecordIdempotencyResponse } from "./gen/resilience/v1/idempotency_pb.js";
import { retryUnavailable } from "./idempotent.js";
import { Reason } from "./reasons.js";

/** The request header read by the middleware (matched case-insensitively). */
export const IDEMPOTENCY_KEY_HEADER = "Idempotency-Key";
/** The header added to a replayed response, with value "true". */
export const IDEMPOTENT_REPLAYED_HEADER = "Idempotent-Replayed";
/** The methods covered by default; others (GET, HEAD, OPTIONS, ...) pass straight through. */
export const DEFAULT_IDEMPOTENT_METHODS: readonly string[] = Object.freeze(["POST", "PUT", "PATCH", "DELETE"]);
/** The default bound of a covered request's body: 1 MiB. */
export const DEFAULT_MAX_BODY_BYTES = 1 << 20;
/** The longest Idempotency-Key accepted. */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

/** The `code` member of the problem bodies the middleware answers with. */
export type IdempotencyProblemCode =
  | "IDEMPOTENCY_KEY_MISSING"
  | "IDEMPOTENCY_KEY_INVALID"
  | "IDEMPOTENCY_KEY_IN_USE"
  | "IDEMPOTENCY_KEY_REUSED"
  | "IDEMPOTENCY_BODY_TOO_LARGE"
  | "SIDECAR_UNAVAILABLE";

/**
 * The body of the middleware's own error responses: an RFC 9457 problem
 * (content type application/problem+json) with a machine-readable `code`.
 */
export interface IdempotencyProblem {
  type: "about:blank";
  /** The HTTP reason phrase of status. */
  title: string;
  status: number;
  detail: string;
  code: IdempotencyProblemCode;
}

/** The `next` of a Connect-style middleware: called with an error, it hands the error to the framework. */
export type NextFunction = (err?: unknown) => void;

/** A Connect-style middleware, as Express's `app.use` and connect take. */
export type IdempotencyMiddleware = (req: IncomingMessage, res: ServerResponse, next: NextFunction) => void;

export interface IdempotencyMiddlewareOptions {
  /**
   * Answer a covered request without an Idempotency-Key header with 400
   * (code IDEMPOTENCY_KEY_MISSING) instead of passing it through; default
   * false.
   */
  required?: boolean;
  /** The methods covered, case-insensitive; default POST, PUT, PATCH, DELETE. */
  methods?: readonly string[];
  /**
   * The scope of the keys: the store key is `<scope>:<Idempotency-Key>`;
   * default "http". A function of the request puts a tenant or user in it
   * (e.g. `(req) => "tenant/" + req.user.id`), so two tenants' equal keys
   * are different operations.
   */
  scope?: string | ((req: IncomingMessage) => string | Promise<string>);
  /**
   * The bound of a covered request's body, in bytes (default 1 MiB). A
   * larger body is answered 413 (code IDEMPOTENCY_BODY_TOO_LARGE) without
   * running the handler.
   */
  maxBodyBytes?: number;
  /**
   * How long a duplicate is refused (409) while the first request runs the
   * handler, in ms (default 30 s; 1 s-1 h). It also bounds the handler: the
   * middleware does not renew the lease, so a handler running longer than
   * this may run again for a duplicate. Choose it longer than the handler
   * takes.
   */
  leaseTtlMs?: number;
  /** How long a stored response is replayed to duplicates, in ms (default 24 h; 1 s-720 h). */
  retentionMs?: number;
  /**
   * How long a duplicate waits for the first request to finish before the
   * middleware answers 409, in ms (default 0: at once; at most 5 min, kept
   * under the client's timeoutMs). When the first finishes within it, the
   * duplicate gets the stored response.
   */
  waitMs?: number;
  /**
   * Called when the sidecar could not record a response after the handler
   * ran (the response is sent all the same, and the key stays leased until
   * leaseTtlMs passes), or could not release the key after a 5xx or a
   * thrown handler (it frees itself after leaseTtlMs). Default: a line on
   * console.error.
   */
  onError?: (err: unknown, req: IncomingMessage) => void;
}

/**
 * The Idempotency-Key middleware: Express, connect, or any server calling
 * `(req, res, next)`; for plain node:http use withIdempotency.
 *
 * For a request whose method is covered and that carries Idempotency-Key
 * (1 to 255 printable ASCII characters), it reads the body (at most
 * maxBodyBytes) and asks the sidecar about the key `<scope>:<key>` with the
 * fingerprint hex(SHA-256(method "\n" path-and-query "\n" body)):
 *
 * - first time: the handler runs (next()) and sees the body unchanged;
 *   its response is held until it ends, then, if its status is below 500,
 *   stored (status, headers except hop-by-hop ones and Set-Cookie, body)
 *   and sent. A 5xx, or a response that never ends because the handler
 *   threw past the framework, releases the key so a retry runs the handler
 *   again: a 5xx is never stored.
 * - stored with the same fingerprint: that response is replayed with
 *   `Idempotent-Replayed: true`; the handler does not run.
 * - in progress: 409 with Retry-After (code IDEMPOTENCY_KEY_IN_USE).
 * - stored or in progress with another fingerprint (other method, path,
 *   query or body): 422 (code IDEMPOTENCY_KEY_REUSED).
 * - sidecar unreachable, unavailable or past its deadline: 503 with
 *   `Retry-After: 1` (code SIDECAR_UNAVAILABLE); the handler does not run.
 *
 * Other errors of the sidecar (e.g. a rejected token) go to next(err).
 * Requests without the header pass straight through (unless `required`),
 * and so do other methods. Mount it before body parsers (express.json(),
 * ...), which then read the body as usual, and after compression.
 * Responses of covered requests are buffered until they end: not for
 * streaming responses.
 */
export function idempotencyMiddleware(client: SidecarClient, opts: IdempotencyMiddlewareOptions = {}): IdempotencyMiddleware {
  const o = resolveOptions(opts);
  return (req, res, next) => {
    handle(client, o, req, res, next).catch((err: unknown) => next(err));
  };
}

/**
 * The middleware around a plain node:http handler, for
 * `http.createServer(withIdempotency(client, handler, opts))`. The
 * returned listener resolves when the handler has settled; when the handler
 * throws or rejects, the key is released and the listener rejects with the
 * handler's error (as the handler alone would): catch it to answer 500. An
 * error of the sidecar other than unavailability rejects it too.
 */
export function withIdempotency(
  client: SidecarClient,
  handler: (req: IncomingMessage, res: ServerResponse) => unknown,
  opts: IdempotencyMiddlewareOptions = {},
): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const o = resolveOptions(opts);
  return (req, res) =>
    new Promise<void>((resolve, reject) => {
      // The key is released before the handler's error is passed on, so a
      // retry sent after the caller answered runs the handler again.
      const failed = (e: unknown) => void (captures.get(res)?.fail() ?? Promise.resolve()).then(() => reject(e));
      const next: NextFunction = (err) => {
        if (err !== undefined) return reject(err);
        let result: unknown;
        try {
          result = handler(req, res);
        } catch (e) {
          return failed(e);
        }
        Promise.resolve(result).then(() => resolve(), failed);
      };
      handle(client, o, req, res, next).then(() => {
        // Answered by the middleware itself (replay, 4xx, 503): no handler.
        if (!handedOn.has(res)) resolve();
      }, reject);
    });
}

interface Resolved {
  required: boolean;
  methods: Set<string>;
  scope: string | ((req: IncomingMessage) => string | Promise<string>);
  maxBodyBytes: number;
  leaseTtlMs: number;
  retentionMs: number;
  waitMs: number;
  onError: (err: unknown, req: IncomingMessage) => void;
}

function resolveOptions(opts: IdempotencyMiddlewareOptions): Resolved {
  const ms = (name: string, v: number | undefined, dflt: number) => {
    if (v === undefined) return dflt;
    if (!Number.isFinite(v) || v < 0) throw new TypeError(`idempotencyMiddleware: ${name} must be a non-negative number of ms, got ${v}`);
    return v;
  };
  if (opts.scope !== undefined && typeof opts.scope !== "function" && (typeof opts.scope !== "string" || opts.scope === "")) {
    throw new TypeError(`idempotencyMiddleware: scope must be a non-empty string or a function, got ${JSON.stringify(opts.scope)}`);
  }
  const maxBodyBytes = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes < 0) {
    throw new TypeError(`idempotencyMiddleware: maxBodyBytes must be a non-negative integer, got ${opts.maxBodyBytes}`);
  }
  return {
    required: opts.required ?? false,
    methods: new Set((opts.methods ?? DEFAULT_IDEMPOTENT_METHODS).map((m) => m.toUpperCase())),
    scope: opts.scope ?? "http",
    maxBodyBytes,
    leaseTtlMs: ms("leaseTtlMs", opts.leaseTtlMs, 30_000),
    retentionMs: ms("retentionMs", opts.retentionMs, 24 * 3600_000),
    waitMs: ms("waitMs", opts.waitMs, 0),
    onError:
      opts.onError ??
      ((err, req) => console.error(`resilience-sidecar idempotency middleware: ${req.method} ${requestPath(req)}:`, err)),
  };
}

/** The responses whose request was handed on to the handler (withIdempotency's bookkeeping). */
const handedOn = new WeakSet<ServerResponse>();
/** The capture of each response being held for the sidecar. */
const captures = new WeakMap<ServerResponse, Capture>();

/** Bound of the complete and release calls made after the handler. */
const CLEANUP_TIMEOUT_MS = 10_000;
/** UNAVAILABLE retries of complete and release (clients/CONTRACT.md). */
const CLEANUP_RETRIES = 3;

async function handle(client: SidecarClient, o: Resolved, req: IncomingMessage, res: ServerResponse, next: NextFunction): Promise<void> {
  const method = (req.method ?? "GET").toUpperCase();
  if (!o.methods.has(method)) return handOn(res, next);

  const values = headerValues(req, "idempotency-key");
  if (values.length === 0) {
    if (!o.required) return handOn(res, next);
    return problem(res, 400, "IDEMPOTENCY_KEY_MISSING", `this request needs an ${IDEMPOTENCY_KEY_HEADER} header`);
  }
  const key = values[0]!;
  if (values.length > 1) {
    return problem(res, 400, "IDEMPOTENCY_KEY_INVALID", `the ${IDEMPOTENCY_KEY_HEADER} header must be sent once, got ${values.length}`);
  }
  const invalid = checkKey(key);
  if (invalid) return problem(res, 400, "IDEMPOTENCY_KEY_INVALID", `the ${IDEMPOTENCY_KEY_HEADER} header ${invalid}`);

  const scope = typeof o.scope === "function" ? await o.scope(req) : o.scope;
  if (typeof scope !== "string" || scope === "") {
    throw new TypeError(`idempotencyMiddleware: the scope function returned ${JSON.stringify(scope)}, not a non-empty string`);
  }

  let body: Buffer;
  try {
    body = await readBody(req, o.maxBodyBytes);
  } catch (err) {
    if (err instanceof BodyTooLarge) {
      res.setHeader("Connection", "close");
      return problem(res, 413, "IDEMPOTENCY_BODY_TOO_LARGE", `the request body is over the ${o.maxBodyBytes} bytes an idempotent request may have`);
    }
    if (err instanceof BodyGone) return; // the client went away: nobody to answer
    throw err;
  }

  const storeKey = `${scope}:${key}`;
  const fp = requestFingerprint(method, requestPath(req), body);
  let resp: CheckOrRecordIdempotencyResponse;
  try {
    resp = await client.idempotency.checkOrRecordIdempotency({
      key: storeKey,
      fingerprint: fp,
      waitTimeout: durationFromMs(Math.floor(o.waitMs)),
      leaseTtl: durationFromMs(Math.floor(o.leaseTtlMs)),
      retention: durationFromMs(Math.floor(o.retentionMs)),
    });
  } catch (err) {
    if (err instanceof SidecarError && err.reason === Reason.IDEMPOTENCY_KEY_MISMATCH) {
      return problem(res, 422, "IDEMPOTENCY_KEY_REUSED", `this ${IDEMPOTENCY_KEY_HEADER} was already used with another request (method, path or body)`);
    }
    if (err instanceof SidecarError && (err.code === Code.Unavailable || err.code === Code.DeadlineExceeded)) {
      res.setHeader("Retry-After", "1");
      return problem(res, 503, "SIDECAR_UNAVAILABLE", "the idempotency store cannot be reached; the request was not processed");
    }
    throw err;
  }

  switch (resp.outcome) {
    case CheckOrRecordIdempotencyResponse_Outcome.COMPLETED:
      return replay(res, resp.result?.data ?? new Uint8Array(), resp.result?.metadata ?? {});
    case CheckOrRecordIdempotencyResponse_Outcome.IN_PROGRESS: {
      const ms = resp.retryAfter ? durationMs(resp.retryAfter) : 1000;
      res.setHeader("Retry-After", String(Math.max(1, Math.ceil(ms / 1000))));
      return problem(res, 409, "IDEMPOTENCY_KEY_IN_USE", `a request with this ${IDEMPOTENCY_KEY_HEADER} is being processed`);
    }
    case CheckOrRecordIdempotencyResponse_Outcome.STARTED: {
      const leaseId = resp.leaseId;
      const release = async () => {
        try {
          await retryUnavailable(undefined, CLEANUP_RETRIES, () =>
            client.idempotency.releaseIdempotency({ key: storeKey, leaseId }, { timeoutMs: CLEANUP_TIMEOUT_MS }),
          );
        } catch (err) {
          o.onError(err, req);
        }
      };
      const cap = new Capture(res, async (status, headers, data) => {
        if (status >= 500) return release();
        try {
          await retryUnavailable(undefined, CLEANUP_RETRIES, () =>
            client.idempotency.completeIdempotency(
              { key: storeKey, leaseId, result: { data, metadata: { ...headers, status: String(status) } } },
              { timeoutMs: CLEANUP_TIMEOUT_MS },
            ),
          );
        } catch (err) {
          // The handler ran: its response goes out all the same. The key
          // stays leased (duplicates get 409) until leaseTtlMs passes.
          o.onError(err, req);
        }
      }, release);
      captures.set(res, cap);
      return handOn(res, next);
    }
    default:
      throw new Error(`unexpected idempotency outcome ${resp.outcome}`);
  }
}

function handOn(res: ServerResponse, next: NextFunction): void {
  handedOn.add(res);
  next();
}

/** The values of a request header (several when it was sent more than once). */
function headerValues(req: IncomingMessage, name: string): string[] {
  const distinct = (req as { headersDistinct?: Record<string, string[] | undefined> }).headersDistinct;
  if (distinct) return distinct[name] ?? [];
  const v = req.headers[name];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** Why key is not a valid Idempotency-Key, or undefined when it is. */
function checkKey(key: string): string | undefined {
  if (key.length === 0) return "must not be empty";
  if (key.length > MAX_IDEMPOTENCY_KEY_LENGTH) return `must be at most ${MAX_IDEMPOTENCY_KEY_LENGTH} characters, got ${key.length}`;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) return `must be printable ASCII, got character code ${c} at position ${i}`;
  }
  return undefined;
}

/** The path with the query string, as the client sent it (Express: originalUrl, before mounting rewrote req.url). */
function requestPath(req: IncomingMessage): string {
  return (req as { originalUrl?: string }).originalUrl ?? req.url ?? "/";
}

/**
 * The fingerprint of a request: hex SHA-256 over the method, "\n", the path
 * with the query string, "\n" and the body bytes. The same in every
 * language's middleware.
 */
export function requestFingerprint(method: string, pathAndQuery: string, body: Uint8Array): string {
  return createHash("sha256").update(`${method}\n${pathAndQuery}\n`).update(body).digest("hex");
}

class BodyTooLarge extends Error {}
class BodyGone extends Error {}

/**
 * Reads the whole body (at most max bytes) and puts it back into req
 * (Readable.unshift), so that body parsers and the handler read it as if
 * nobody had: 'end' is not emitted before they read the data.
 */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const cl = req.headers["content-length"];
  if (req.headers["transfer-encoding"] === undefined && (cl === undefined || cl === "0")) return Promise.resolve(Buffer.alloc(0));
  if (cl !== undefined && Number(cl) > max) return Promise.reject(new BodyTooLarge());
  if (req.readableEnded || req.readableDidRead) {
    // A body parser ran before this middleware: use its raw body if it kept one.
    const raw = (req as { rawBody?: unknown }).rawBody;
    if (raw instanceof Uint8Array) return raw.length > max ? Promise.reject(new BodyTooLarge()) : Promise.resolve(Buffer.from(raw));
    return Promise.reject(
      new Error("idempotencyMiddleware: the request body was already read; mount the middleware before body parsers (or keep the raw body in req.rawBody)"),
    );
  }
  if (req.complete && req.readableLength === 0) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      req.off("readable", onReadable);
      req.off("error", onGone);
      req.off("close", onGone);
    };
    const onGone = () => {
      cleanup();
      reject(new BodyGone());
    };
    const onReadable = () => {
      // read() only while data is buffered: reading at the end of an empty
      // buffer would make the stream emit 'end' before the handler listens.
      while (req.readableLength > 0) {
        const chunk = req.read() as Buffer | null;
        if (chunk === null) break;
        size += chunk.length;
        if (size > max) {
          cleanup();
          return reject(new BodyTooLarge());
        }
        chunks.push(chunk);
      }
      if (req.complete) {
        cleanup();
        const body = Buffer.concat(chunks, size);
        if (body.length > 0) req.unshift(body);
        resolve(body);
      }
    };
    req.on("readable", onReadable);
    req.on("error", onGone);
    req.on("close", onGone);
  });
}

/** Headers that describe one connection, not the response: never stored (RFC 9110 7.6.1), nor Set-Cookie. */
const NOT_STORED = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "set-cookie",
  "status",
  IDEMPOTENT_REPLAYED_HEADER.toLowerCase(),
]);

/**
 * Holds a response in memory while the handler writes it, then hands
 * status, headers and body to onEnd before sending it for real.
 */
class Capture {
  private readonly chunks: Buffer[] = [];
  private readonly orig: Pick<ServerResponse, "writeHead" | "write" | "end" | "flushHeaders">;
  private settled = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly onEnd: (status: number, headers: Record<string, string>, body: Uint8Array) => Promise<void>,
    private readonly onFail: () => Promise<void>,
  ) {
    this.orig = { writeHead: res.writeHead, write: res.write, end: res.end, flushHeaders: res.flushHeaders };
    const self = this;
    res.writeHead = function writeHead(statusCode: number, reason?: string | OutgoingHttpHeaders | OutgoingHttpHeader[], headers?: OutgoingHttpHeaders | OutgoingHttpHeader[]) {
      if (typeof reason !== "string") {
        headers = reason;
        reason = undefined;
      }
      res.statusCode = statusCode;
      if (reason !== undefined) res.statusMessage = reason;
      if (Array.isArray(headers)) {
        // [[name, value], ...] or the flat [name, value, name, value, ...]
        const pairs = headers.length > 0 && Array.isArray(headers[0]) ? (headers as unknown as [string, OutgoingHttpHeader][]) : pairUp(headers);
        const seen = new Set<string>();
        for (const [name, value] of pairs) {
          const lower = String(name).toLowerCase();
          if (seen.has(lower)) res.appendHeader(String(name), value as string | string[]);
          else res.setHeader(String(name), value);
          seen.add(lower);
        }
      } else if (headers) {
        for (const [name, value] of Object.entries(headers)) if (value !== undefined) res.setHeader(name, value);
      }
      return res;
    } as ServerResponse["writeHead"];
    res.flushHeaders = () => undefined;
    res.write = function write(chunk: unknown, encoding?: unknown, cb?: unknown) {
      if (typeof encoding === "function") [cb, encoding] = [encoding, undefined];
      self.add(chunk, encoding as BufferEncoding | undefined);
      if (typeof cb === "function") process.nextTick(cb as () => void);
      return true;
    } as ServerResponse["write"];
    res.end = function end(chunk?: unknown, encoding?: unknown, cb?: unknown) {
      if (typeof chunk === "function") [cb, chunk] = [chunk, undefined];
      if (typeof encoding === "function") [cb, encoding] = [encoding, undefined];
      if (chunk !== undefined && chunk !== null) self.add(chunk, encoding as BufferEncoding | undefined);
      void self.finish(typeof cb === "function" ? (cb as () => void) : undefined);
      return res;
    } as ServerResponse["end"];
  }

  private add(chunk: unknown, encoding: BufferEncoding | undefined): void {
    if (this.settled) return;
    if (typeof chunk === "string") this.chunks.push(Buffer.from(chunk, encoding ?? "utf8"));
    else if (chunk instanceof Uint8Array) this.chunks.push(Buffer.from(chunk));
    else throw new TypeError(`the chunk must be a string, Buffer or Uint8Array, got ${typeof chunk}`);
  }

  private restore(): void {
    captures.delete(this.res);
    Object.assign(this.res, this.orig);
  }

  /** The response ended: store it (or release the key for a 5xx), then send it. */
  private async finish(cb: (() => void) | undefined): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    const res = this.res;
    const body = Buffer.concat(this.chunks);
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(res.getHeaders())) {
      if (value === undefined || NOT_STORED.has(name)) continue;
      headers[name] = Array.isArray(value) ? value.join(", ") : String(value);
    }
    try {
      await this.onEnd(res.statusCode, headers, body);
    } finally {
      this.restore();
      res.end(body, cb);
    }
  }

  /**
   * The handler threw: release the key (resolves when done) and give the
   * response back to the caller, who answers it (or not). A response that
   * had already ended is stored or released as usual instead.
   */
  fail(): Promise<void> {
    if (this.settled) return Promise.resolve();
    this.settled = true;
    this.restore();
    return this.onFail();
  }
}

function pairUp(flat: readonly unknown[]): [string, OutgoingHttpHeader][] {
  const out: [string, OutgoingHttpHeader][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push([String(flat[i]), flat[i + 1] as OutgoingHttpHeader]);
  return out;
}

/** Sends a stored response again, marked Idempotent-Replayed. */
function replay(res: ServerResponse, data: Uint8Array, metadata: Record<string, string>): void {
  const status = Number(metadata.status);
  for (const [name, value] of Object.entries(metadata)) {
    if (NOT_STORED.has(name)) continue;
    try {
      res.setHeader(name, value);
    } catch {
      // a header Node refuses to send cannot have been sent the first time either
    }
  }
  res.setHeader(IDEMPOTENT_REPLAYED_HEADER, "true");
  res.statusCode = Number.isInteger(status) && status >= 100 && status <= 599 ? status : 200;
  res.end(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
}

/** Answers with an RFC 9457 problem body. */
function problem(res: ServerResponse, status: number, code: IdempotencyProblemCode, detail: string): void {
  const body: IdempotencyProblem = { type: "about:blank", title: STATUS_CODES[status] ?? String(status), status, detail, code };
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader("Content-Type", "application/problem+json");
  res.setHeader("Content-Length", Buffer.byteLength(text));
  res.end(text);
}
