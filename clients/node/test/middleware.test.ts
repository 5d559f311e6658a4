// The Idempotency-Key middleware (src/middleware.ts) in Express and in a
// plain node:http server, against the real sidecar on a real redis-server:
// every case of the middleware's shared rules (issue 21, section 7).

import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import express from "express";

import { GetIdempotencyResponse_State, type SidecarClient } from "@seed-a88e5317/resilience-sidecar";
import {
  idempotencyMiddleware,
  requestFingerprint,
  withIdempotency,
  type IdempotencyMiddlewareOptions,
  type IdempotencyProblem,
} from "@seed-a88e5317/resilience-sidecar/middleware";

import { clientOf, Redis, Sidecar, tempDir } from "./harness.js";

let redis: Redis;
let sidecar: Sidecar;
let client: SidecarClient;
const servers: http.Server[] = [];

before(async () => {
  redis = await Redis.start();
  sidecar = await Sidecar.start(redis);
  client = clientOf(sidecar);
});

after(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
  client?.close();
  await sidecar?.stop();
  await redis?.stop();
});

async function listen(handler: http.RequestListener): Promise<number> {
  const srv = http.createServer(handler);
  servers.push(srv);
  await new Promise<void>((res) => srv.listen(0, "127.0.0.1", () => res()));
  return (srv.address() as AddressInfo).port;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * One request over a fresh connection. headers may be an array of raw
 * [name, value] pairs (to send a header twice); body as a Buffer or
 * string; chunked sends it without Content-Length.
 */
function send(
  port: number,
  method: string,
  path: string,
  opts: { key?: string; headers?: Record<string, string> | [string, string][]; body?: string | Buffer; chunked?: boolean } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: [string, string][] = Array.isArray(opts.headers) ? [...opts.headers] : Object.entries(opts.headers ?? {});
    if (opts.key !== undefined) headers.push(["Idempotency-Key", opts.key]);
    if (opts.body !== undefined && !opts.chunked) headers.push(["Content-Length", String(Buffer.byteLength(opts.body))]);
    if (opts.body !== undefined && !headers.some(([k]) => k.toLowerCase() === "content-type")) headers.push(["Content-Type", "application/json"]);
    // a name given twice is sent as two header lines
    const outgoing: Record<string, string | string[]> = {};
    for (const [k, v] of headers) {
      const prev = outgoing[k.toLowerCase()];
      outgoing[k.toLowerCase()] = prev === undefined ? v : [...(Array.isArray(prev) ? prev : [prev]), v];
    }
    const req = http.request({ host: "127.0.0.1", port, method, path, agent: false, headers: outgoing }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (opts.body !== undefined && opts.chunked) {
      // two writes: the body arrives in more than one chunk
      const b = Buffer.from(opts.body);
      req.write(b.subarray(0, b.length >> 1));
      req.end(b.subarray(b.length >> 1));
    } else {
      req.end(opts.body);
    }
  });
}

function problemOf(r: Reply): IdempotencyProblem {
  assert.equal(r.headers["content-type"], "application/problem+json", `not a problem body: ${r.status} ${r.body}`);
  const p = JSON.parse(r.body) as IdempotencyProblem;
  assert.equal(p.type, "about:blank");
  assert.equal(p.status, r.status);
  assert.equal(p.title, http.STATUS_CODES[r.status]);
  assert.ok(p.detail.length > 0);
  return p;
}

const newKey = () => `order-${randomUUID()}`;

/** An Express app: the middleware, express.json() after it, and a POST /orders handler counting its runs. */
async function expressApp(c: SidecarClient, opts: IdempotencyMiddlewareOptions = {}) {
  const state = {
    runs: 0,
    /** When set, the handler waits for it before answering. */
    gate: undefined as Promise<void> | undefined,
    /** The statuses the next runs answer with (then 201). */
    statuses: [] as number[],
    /** Throw in the next runs. */
    throws: 0,
    bodies: [] as unknown[],
  };
  const app = express();
  app.use(idempotencyMiddleware(c, { onError: (err) => assert.fail(`onError: ${String(err)}`), ...opts }));
  app.use(express.json());
  app.all("/orders", async (req, res) => {
    state.runs++;
    state.bodies.push(req.body);
    if (state.gate) await state.gate;
    if (state.throws > 0) {
      state.throws--;
      throw new Error("database down");
    }
    const status = state.statuses.shift() ?? 201;
    res.set("X-Order-Run", String(state.runs));
    res.append("X-Multi", "a");
    res.append("X-Multi", "b");
    res.cookie("session", "s1");
    res.status(status).json({ run: state.runs, got: req.body ?? null, query: req.query });
  });
  // Express's default error handler would print the stack: answer 500 quietly.
  app.use((_err: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    res.status(500).json({ error: "internal" });
  });
  const port = await listen(app);
  return { port, state };
}

describe("idempotency middleware (Express)", () => {
  test("the first request runs the handler once; a duplicate replays status, headers and body with Idempotent-Replayed", async () => {
    const { port, state } = await expressApp(client);
    const key = newKey();
    const body = JSON.stringify({ sku: "book", qty: 2 });
    const first = await send(port, "POST", "/orders?src=web", { key, body });
    assert.equal(first.status, 201, first.body);
    assert.equal(first.headers["idempotent-replayed"], undefined);
    assert.deepEqual(JSON.parse(first.body), { run: 1, got: { sku: "book", qty: 2 }, query: { src: "web" } });
    assert.deepEqual(state.bodies, [{ sku: "book", qty: 2 }], "express.json() after the middleware did not see the body");
    assert.ok(first.headers["set-cookie"], "the first response has its cookie");

    const dup = await send(port, "POST", "/orders?src=web", { key, body });
    assert.equal(state.runs, 1, "the handler ran again for a duplicate");
    assert.equal(dup.status, 201);
    assert.equal(dup.body, first.body);
    assert.equal(dup.headers["idempotent-replayed"], "true");
    assert.equal(dup.headers["x-order-run"], "1");
    assert.equal(dup.headers["x-multi"], "a, b");
    assert.equal(dup.headers["content-type"], first.headers["content-type"]);
    assert.equal(dup.headers["etag"], first.headers["etag"]);
    assert.equal(dup.headers["set-cookie"], undefined, "Set-Cookie must not be replayed");

    // Stored under "http:<key>" with the fingerprint of method, path and body.
    const fp = requestFingerprint("POST", "/orders?src=web", Buffer.from(body));
    assert.equal(fp, createHash("sha256").update(`POST\n/orders?src=web\n${body}`).digest("hex"));
    const info = await client.idempotency.getIdempotency({ key: `http:${key}`, fingerprint: fp });
    assert.equal(info.state, GetIdempotencyResponse_State.COMPLETED);
    assert.equal(info.fingerprintMatch, true);
  });

  test("a duplicate while the first is running gets 409 with Retry-After; after it, the stored response", async () => {
    const { port, state } = await expressApp(client);
    let open!: () => void;
    state.gate = new Promise((res) => (open = res));
    const key = newKey();
    const body = JSON.stringify({ sku: "pen" });
    const first = send(port, "POST", "/orders", { key, body });
    while (state.runs === 0) await new Promise((r) => setTimeout(r, 10)); // until the handler runs

    const dup = await send(port, "POST", "/orders", { key, body });
    assert.equal(dup.status, 409);
    assert.equal(problemOf(dup).code, "IDEMPOTENCY_KEY_IN_USE");
    assert.match(String(dup.headers["retry-after"]), /^[1-9]\d*$/);

    open();
    const done = await first;
    assert.equal(done.status, 201);
    const later = await send(port, "POST", "/orders", { key, body });
    assert.equal(later.status, 201);
    assert.equal(later.headers["idempotent-replayed"], "true");
    assert.equal(later.body, done.body);
    assert.equal(state.runs, 1);
  });

  test("waitMs: a duplicate waits for the first and gets its response instead of 409", async () => {
    const { port, state } = await expressApp(client, { waitMs: 5_000 });
    let open!: () => void;
    state.gate = new Promise((res) => (open = res));
    const key = newKey();
    const first = send(port, "POST", "/orders", { key, body: "{}" });
    while (state.runs === 0) await new Promise((r) => setTimeout(r, 10));
    const dup = send(port, "POST", "/orders", { key, body: "{}" });
    setTimeout(open, 200); // real time must pass: the duplicate is waiting in the sidecar meanwhile
    const [a, b] = await Promise.all([first, dup]);
    assert.equal(a.status, 201);
    assert.equal(b.status, 201, b.body);
    assert.equal(b.headers["idempotent-replayed"], "true");
    assert.equal(b.body, a.body);
    assert.equal(state.runs, 1);
  });

  test("the same key with another body, path or method is 422", async () => {
    const { port, state } = await expressApp(client);
    const key = newKey();
    assert.equal((await send(port, "POST", "/orders", { key, body: '{"qty":1}' })).status, 201);
    for (const [method, path, body] of [
      ["POST", "/orders", '{"qty":2}'],
      ["POST", "/orders?qty=1", '{"qty":1}'],
      ["PUT", "/orders", '{"qty":1}'],
    ] as const) {
      const r = await send(port, method, path, { key, body });
      assert.equal(r.status, 422, `${method} ${path} ${body}: ${r.body}`);
      assert.equal(problemOf(r).code, "IDEMPOTENCY_KEY_REUSED");
    }
    assert.equal(state.runs, 1);
  });

  test("a 5xx is not stored: the key is released and a retry runs the handler again", async () => {
    const { port, state } = await expressApp(client);
    state.statuses = [503];
    const key = newKey();
    const failed = await send(port, "POST", "/orders", { key, body: "{}" });
    assert.equal(failed.status, 503, "the handler's own 5xx is sent");
    assert.deepEqual(JSON.parse(failed.body).run, 1);
    const retry = await send(port, "POST", "/orders", { key, body: "{}" });
    assert.equal(retry.status, 201);
    assert.equal(retry.headers["idempotent-replayed"], undefined);
    assert.equal(state.runs, 2);
    const dup = await send(port, "POST", "/orders", { key, body: "{}" });
    assert.equal(dup.headers["idempotent-replayed"], "true");
    assert.equal(dup.body, retry.body);
    assert.equal(state.runs, 2);
  });

  test("a handler that throws: Express answers 500, the key is released, a retry runs the handler again", async () => {
    const { port, state } = await expressApp(client);
    state.throws = 1;
    const key = newKey();
    const failed = await send(port, "POST", "/orders", { key, body: "{}" });
    assert.equal(failed.status, 500);
    assert.deepEqual(JSON.parse(failed.body), { error: "internal" });
    const retry = await send(port, "POST", "/orders", { key, body: "{}" });
    assert.equal(retry.status, 201);
    assert.equal(state.runs, 2);
  });

  test("a 4xx is stored and replayed like any response below 500", async () => {
    const { port, state } = await expressApp(client);
    state.statuses = [402];
    const key = newKey();
    const first = await send(port, "POST", "/orders", { key, body: "{}" });
    assert.equal(first.status, 402);
    const dup = await send(port, "POST", "/orders", { key, body: "{}" });
    assert.equal(dup.status, 402);
    assert.equal(dup.headers["idempotent-replayed"], "true");
    assert.equal(state.runs, 1);
  });

  test("requests without the header, and methods not covered, pass straight through", async () => {
    const { port, state } = await expressApp(client);
    const a = await send(port, "POST", "/orders", { body: "{}" });
    const b = await send(port, "POST", "/orders", { body: "{}" });
    assert.equal(a.status, 201);
    assert.equal(b.status, 201);
    assert.equal(state.runs, 2);
    assert.equal(b.headers["idempotent-replayed"], undefined);
    const key = newKey();
    await send(port, "GET", "/orders", { key });
    await send(port, "GET", "/orders", { key });
    assert.equal(state.runs, 4, "GET with a key must pass through");
    const info = await client.idempotency.getIdempotency({ key: `http:${key}` });
    assert.equal(info.state, GetIdempotencyResponse_State.ABSENT);
  });

  test("required: a covered request without the header is 400 IDEMPOTENCY_KEY_MISSING", async () => {
    const { port, state } = await expressApp(client, { required: true });
    const r = await send(port, "POST", "/orders", { body: "{}" });
    assert.equal(r.status, 400);
    assert.equal(problemOf(r).code, "IDEMPOTENCY_KEY_MISSING");
    assert.equal((await send(port, "GET", "/orders")).status, 201, "GET is not covered");
    assert.equal(state.runs, 1);
  });

  test("an invalid key is 400 IDEMPOTENCY_KEY_INVALID naming the header; 255 printable characters are fine", async () => {
    const { port, state } = await expressApp(client);
    const invalid: Array<[string, [string, string][]]> = [
      ["empty", [["Idempotency-Key", ""]]],
      ["256 characters", [["Idempotency-Key", "k".repeat(256)]]],
      ["not ASCII", [["Idempotency-Key", "caf\u00e9"]]],
      ["sent twice", [["Idempotency-Key", "a"], ["idempotency-key", "b"]]],
    ];
    for (const [what, headers] of invalid) {
      const r = await send(port, "POST", "/orders", { headers, body: "{}" });
      assert.equal(r.status, 400, `${what}: ${r.body}`);
      const p = problemOf(r);
      assert.equal(p.code, "IDEMPOTENCY_KEY_INVALID", what);
      assert.match(p.detail, /Idempotency-Key/, what);
    }
    assert.equal(state.runs, 0);
    const ok = await send(port, "POST", "/orders", { key: `${randomUUID()} ~!`.padEnd(255, "x"), body: "{}" });
    assert.equal(ok.status, 201, ok.body);
  });

  test("a body over maxBodyBytes is 413 and the handler does not run", async () => {
    const { port, state } = await expressApp(client, { maxBodyBytes: 64 });
    const big = JSON.stringify({ pad: "x".repeat(100) });
    const withLength = await send(port, "POST", "/orders", { key: newKey(), body: big });
    assert.equal(withLength.status, 413);
    assert.equal(problemOf(withLength).code, "IDEMPOTENCY_BODY_TOO_LARGE");
    const chunked = await send(port, "POST", "/orders", { key: newKey(), body: big, chunked: true });
    assert.equal(chunked.status, 413);
    assert.equal(state.runs, 0);
    const small = await send(port, "POST", "/orders", { key: newKey(), body: '{"a":1}', chunked: true });
    assert.equal(small.status, 201, small.body);
    assert.deepEqual(state.bodies, [{ a: 1 }]);
  });

  test("scope: the same key of two tenants are two operations", async () => {
    const { port, state } = await expressApp(client, { scope: (req) => `tenant/${req.headers["x-tenant"]}` });
    const key = newKey();
    const a = await send(port, "POST", "/orders", { key, body: '{"t":1}', headers: { "X-Tenant": "a" } });
    const b = await send(port, "POST", "/orders", { key, body: '{"t":2}', headers: { "X-Tenant": "b" } });
    assert.equal(a.status, 201);
    assert.equal(b.status, 201, b.body);
    const a2 = await send(port, "POST", "/orders", { key, body: '{"t":1}', headers: { "X-Tenant": "a" } });
    assert.equal(a2.headers["idempotent-replayed"], "true");
    assert.equal(a2.body, a.body);
    assert.equal(state.runs, 2);
    assert.equal((await client.idempotency.getIdempotency({ key: `tenant/a:${key}` })).state, GetIdempotencyResponse_State.COMPLETED);
  });

  test("a duplicate sent through a second sidecar on the same Redis is replayed", async () => {
    const other = await Sidecar.start(redis);
    const otherClient = clientOf(other);
    try {
      const appA = await expressApp(client);
      const appB = await expressApp(otherClient);
      const key = newKey();
      const first = await send(appA.port, "POST", "/orders", { key, body: '{"n":1}' });
      assert.equal(first.status, 201);
      const dup = await send(appB.port, "POST", "/orders", { key, body: '{"n":1}' });
      assert.equal(dup.status, 201);
      assert.equal(dup.headers["idempotent-replayed"], "true");
      assert.equal(dup.body, first.body);
      assert.equal(appA.state.runs + appB.state.runs, 1);
    } finally {
      otherClient.close();
      await other.stop();
    }
  });

  test("sidecar stopped: 503 with Retry-After: 1 and the handler does not run", async () => {
    const doomed = await Sidecar.start(redis);
    const doomedClient = clientOf(doomed);
    try {
      const { port, state } = await expressApp(doomedClient);
      assert.equal((await send(port, "POST", "/orders", { key: newKey(), body: "{}" })).status, 201);
      await doomed.stop();
      const r = await send(port, "POST", "/orders", { key: newKey(), body: "{}" });
      assert.equal(r.status, 503, r.body);
      assert.equal(r.headers["retry-after"], "1");
      assert.equal(problemOf(r).code, "SIDECAR_UNAVAILABLE");
      assert.equal(state.runs, 1, "the handler ran without the guard");
    } finally {
      doomedClient.close();
      await doomed.stop();
    }
  });

  test("other sidecar errors (a rejected token) go to the framework's error handler", async () => {
    const dir = tempDir("sidecar-token-");
    writeFileSync(join(dir.path, "token"), "s3cret\n");
    const secured = await Sidecar.start(redis, ["--api-token-file", join(dir.path, "token")]);
    const wrong = clientOf(secured, { token: "wrong" });
    try {
      const { port, state } = await expressApp(wrong);
      const r = await send(port, "POST", "/orders", { key: newKey(), body: "{}" });
      assert.equal(r.status, 500);
      assert.deepEqual(JSON.parse(r.body), { error: "internal" });
      assert.equal(state.runs, 0);
    } finally {
      wrong.close();
      await secured.stop();
      dir.remove();
    }
  });
});

describe("idempotency middleware (node:http, withIdempotency)", () => {
  async function plainApp(opts: IdempotencyMiddlewareOptions = {}) {
    const state = { runs: 0, throws: 0, bodies: [] as Buffer[] };
    const listener = withIdempotency(
      client,
      async (req, res) => {
        state.runs++;
        const chunks: Buffer[] = [];
        for await (const c of req) chunks.push(c as Buffer);
        const body = Buffer.concat(chunks);
        state.bodies.push(body);
        if (state.throws > 0) {
          state.throws--;
          throw new Error("boom");
        }
        res.writeHead(200, { "Content-Type": "application/octet-stream", "X-Digest": createHash("sha256").update(body).digest("hex") });
        res.write(`run ${state.runs}:`);
        res.end(body);
      },
      opts,
    );
    const port = await listen((req, res) => {
      listener(req, res).catch(() => {
        // the handler's error: answer it as a plain node:http server would have to
        res.statusCode = 500;
        res.end("internal");
      });
    });
    return { port, state };
  }

  test("the handler reads the body from the stream unchanged; a duplicate is replayed", async () => {
    const { port, state } = await plainApp();
    const body = Buffer.from(Array.from({ length: 200_000 }, (_, i) => i % 251));
    const key = newKey();
    const first = await send(port, "PUT", "/blob", { key, body, chunked: true, headers: { "Content-Type": "application/octet-stream" } });
    assert.equal(first.status, 200);
    assert.ok(state.bodies[0]!.equals(body), "the handler did not get the body unchanged");
    assert.equal(first.headers["x-digest"], createHash("sha256").update(body).digest("hex"));
    const dup = await send(port, "PUT", "/blob", { key, body, headers: { "Content-Type": "application/octet-stream" } });
    assert.equal(dup.status, 200);
    assert.equal(dup.headers["idempotent-replayed"], "true");
    assert.equal(dup.headers["x-digest"], first.headers["x-digest"]);
    assert.equal(dup.body, first.body);
    assert.equal(state.runs, 1);
  });

  test("an empty body (Content-Length: 0 and chunked) reaches the handler as empty", async () => {
    const { port, state } = await plainApp();
    assert.equal((await send(port, "DELETE", "/blob/1", { key: newKey(), body: "" })).status, 200);
    assert.equal((await send(port, "DELETE", "/blob/2", { key: newKey(), body: "", chunked: true })).status, 200);
    assert.deepEqual(state.bodies.map((b) => b.length), [0, 0]);
  });

  test("a handler that throws: the listener rejects with its error, the key is released, a retry runs again", async () => {
    const { port, state } = await plainApp();
    state.throws = 1;
    const key = newKey();
    const failed = await send(port, "POST", "/x", { key, body: "abc" });
    assert.equal(failed.status, 500);
    assert.equal(failed.body, "internal");
    const retry = await send(port, "POST", "/x", { key, body: "abc" });
    assert.equal(retry.status, 200);
    assert.equal(retry.body, "run 2:abc");
    assert.equal(state.runs, 2);
  });

  test("bad options are refused at once", () => {
    assert.throws(() => idempotencyMiddleware(client, { scope: "" }), /scope must be a non-empty string/);
    assert.throws(() => idempotencyMiddleware(client, { maxBodyBytes: -1 }), /maxBodyBytes/);
    assert.throws(() => idempotencyMiddleware(client, { leaseTtlMs: Number.NaN }), /leaseTtlMs/);
  });
});
