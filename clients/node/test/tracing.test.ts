// The caller's OpenTelemetry context reaches an upstream through the real
// sidecar: the app (this test) uses @opentelemetry/api with the W3C trace
// context propagator and an AsyncLocalStorage context manager, as an app
// with the OpenTelemetry SDK does; the client sends `traceparent`, and the
// sidecar carries the trace on to the upstream it calls for ExecuteCall.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";

import { context, propagation, trace, TraceFlags } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";

import { createClient, executeCall, type SidecarClient } from "@seed-a88e5317/resilience-sidecar";

import { clientOf, configFile, Redis, Sidecar, startHttp } from "./harness.js";
import { scenario } from "./scenarios.js";

let redis: Redis;
let upstream: Awaited<ReturnType<typeof startHttp>>;
let cfg: ReturnType<typeof configFile>;
let sidecar: Sidecar;
let client: SidecarClient;
/** The traceparent header each upstream request carried, by path. */
const received = new Map<string, string | undefined>();
const contextManager = new AsyncLocalStorageContextManager();

before(async () => {
  context.setGlobalContextManager(contextManager.enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  redis = await Redis.start();
  upstream = await startHttp((req, res) => {
    received.set(req.url ?? "", req.headers["traceparent"] as string | undefined);
    req.resume();
    res.end("ok");
  });
  cfg = configFile(`upstreams:\n  traced: {url: "${upstream.url}"}\n`);
  sidecar = await Sidecar.start(redis, ["--config", cfg.path]);
  client = clientOf(sidecar);
});

after(async () => {
  client?.close();
  await sidecar?.stop();
  await upstream?.close();
  cfg?.remove();
  await redis?.stop();
  propagation.disable();
  context.disable();
});

/** Runs fn inside a span of the app's trace; resolves with fn's result and the span's trace id. */
async function inSpan<T>(fn: () => Promise<T>): Promise<{ result: T; traceId: string }> {
  const span = trace.wrapSpanContext({
    traceId: randomBytes(16).toString("hex"),
    spanId: randomBytes(8).toString("hex"),
    traceFlags: TraceFlags.SAMPLED,
  });
  const result = await context.with(trace.setSpan(context.active(), span), fn);
  return { result, traceId: span.spanContext().traceId };
}

/** The trace id of a traceparent header ("00-<trace id>-<parent id>-<flags>"). */
function traceIdOf(traceparent: string | undefined): string | undefined {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/.exec(traceparent ?? "");
  return m?.[1];
}

scenario("tracing-propagates-traceparent", "an upstream reached through ExecuteCall receives the app span's trace id", async () => {
  const { result, traceId } = await inSpan(() => executeCall(client, "traced", { method: "GET", path: "/in-span" }));
  assert.equal(result.status, 200);
  assert.ok(received.has("/in-span"), "the upstream was not called");
  const got = received.get("/in-span");
  assert.equal(traceIdOf(got), traceId, `upstream got traceparent ${got}, want trace ${traceId}`);

  // Outside any span the upstream is not put in one of the app's traces.
  await executeCall(client, "traced", { method: "GET", path: "/no-span" });
  assert.notEqual(traceIdOf(received.get("/no-span")), traceId);
});

test("propagateTraceContext: false sends no trace context", async () => {
  const c = createClient({ addr: sidecar.addr, token: "", propagateTraceContext: false });
  try {
    const { traceId } = await inSpan(() => executeCall(c, "traced", { method: "GET", path: "/opted-out" }));
    assert.ok(received.has("/opted-out"));
    assert.notEqual(traceIdOf(received.get("/opted-out")), traceId);
  } finally {
    c.close();
  }
});
