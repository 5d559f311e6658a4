// guard, CircuitBreaker and executeCall against the real sidecar on a real
// Redis, with an HTTP upstream started by the test.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  BreakerOpenError,
  BreakerState,
  CallOutcome,
  CircuitBreaker,
  executeCall,
  guard,
  InvalidArgumentError,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, configFile, Redis, Sidecar, startHttp } from "./harness.js";
import { scenario } from "./scenarios.js";

let redis: Redis;
let upstream: Awaited<ReturnType<typeof startHttp>>;
let cfg: ReturnType<typeof configFile>;
let sidecar: Sidecar;
let client: SidecarClient;
const seen: Array<{ method: string; url: string; headers: Record<string, string | string[] | undefined>; body: string }> = [];

before(async () => {
  redis = await Redis.start();
  upstream = await startHttp((req, res) => {
    let body = "";
    req.on("data", (b: Buffer) => (body += b.toString()));
    req.on("end", () => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body });
      if (req.url?.startsWith("/fail")) {
        res.statusCode = 500;
        return void res.end("broken");
      }
      res.statusCode = req.method === "POST" ? 201 : 200;
      res.setHeader("content-type", "application/json");
      res.setHeader("x-upstream", "inventory");
      res.end(JSON.stringify({ method: req.method, url: req.url, body, idem: req.headers["idempotency-key"] ?? null }));
    });
  });
  cfg = configFile(
    [
      "upstreams:",
      `  inventory: {url: "${upstream.url}", breaker: inventory}`,
      "breakers:",
      "  guarded: {consecutive_failures: 3, open_duration: 1s}",
      "  inventory: {consecutive_failures: 2, open_duration: 1m}",
      "",
    ].join("\n"),
  );
  sidecar = await Sidecar.start(redis, ["--config", cfg.path]);
  client = clientOf(sidecar);
});

after(async () => {
  client?.close();
  await sidecar?.stop();
  await upstream?.close();
  cfg?.remove();
  await redis?.stop();
});

const down = new Error("dependency down");

describe("guard", () => {
  scenario("breaker-guard-opens-and-recovers", "failures open the breaker (BreakerOpenError with a retry delay); after the open duration a success closes it", async () => {
    assert.equal(await guard(client, "guarded", () => "fine"), "fine");
    for (let i = 0; i < 3; i++) {
      await assert.rejects(guard(client, "guarded", () => Promise.reject(down)), (e) => e === down);
    }
    let ran = false;
    let open: BreakerOpenError | undefined;
    await assert.rejects(
      guard(client, "guarded", () => {
        ran = true;
      }),
      (e: unknown) => {
        assert.ok(e instanceof BreakerOpenError, `got ${e}`);
        open = e;
        return true;
      },
    );
    assert.equal(ran, false, "the function ran although the breaker is open");
    assert.equal(open!.reason, "BREAKER_OPEN");
    assert.equal(open!.metadata.breaker, "guarded");
    const delay = open!.retryDelayMs ?? 0;
    assert.ok(delay > 0 && delay <= 1_000, `retry delay ${delay} ms, want (0, 1000] for a 1 s open duration`);
    const status = await new CircuitBreaker(client, "guarded", () => undefined).status();
    assert.equal(status?.state, BreakerState.OPEN);

    await sleep(delay + 50); // real time: the open duration must pass
    assert.equal(await guard(client, "guarded", () => "recovered"), "recovered");
    const closed = await new CircuitBreaker(client, "guarded", () => undefined).status();
    assert.equal(closed?.state, BreakerState.CLOSED, `state ${closed?.state} after a successful probe`);
    assert.equal(closed?.counts?.outstandingPermits, 0);
  });

  test("outcome: an error that says nothing about the dependency is not a failure; an aborted caller's error is ignored", async () => {
    const name = `guard/${randomUUID()}`;
    const notFound = new Error("not found");
    for (let i = 0; i < 6; i++) {
      await assert.rejects(
        guard(client, name, () => Promise.reject(notFound), { outcome: (e, failed) => (failed && e !== notFound ? CallOutcome.FAILURE : CallOutcome.SUCCESS) }),
        (e) => e === notFound,
      );
    }
    const ctl = new AbortController();
    await assert.rejects(
      guard(
        client,
        name,
        (signal) => {
          ctl.abort(new Error("caller gone"));
          throw signal!.reason;
        },
        { signal: ctl.signal },
      ),
      /caller gone/,
    );
    const b = await new CircuitBreaker(client, name, () => undefined).status();
    assert.equal(b?.state, BreakerState.CLOSED);
    assert.equal(b?.counts?.failures, 0);
    assert.equal(b?.counts?.calls, 6, "the ignored call was counted");
  });

  test("CircuitBreaker.fire passes the arguments and opens like guard (opossum style)", async () => {
    const name = `fire/${randomUUID()}`;
    const calls: number[] = [];
    const breaker = new CircuitBreaker(client, name, async (n: number, fail: boolean) => {
      calls.push(n);
      if (fail) throw down;
      return n * 2;
    });
    assert.equal(breaker.name, name);
    assert.equal(await breaker.fire(21, false), 42);
    for (let i = 0; i < 5; i++) await assert.rejects(breaker.fire(i, true), (e) => e === down); // default policy: 5 in a row
    await assert.rejects(breaker.fire(99, false), BreakerOpenError);
    assert.deepEqual(calls, [21, 0, 1, 2, 3, 4]);
  });

  test("an invalid breaker name: InvalidArgumentError naming the field, the function does not run", async () => {
    let ran = false;
    await assert.rejects(
      guard(client, "", () => {
        ran = true;
      }),
      (e: unknown) => {
        assert.ok(e instanceof InvalidArgumentError, `got ${e}`);
        assert.ok(e.violation("breaker"), JSON.stringify(e.violations));
        return true;
      },
    );
    assert.equal(ran, false);
  });
});

describe("executeCall", () => {
  scenario("execute-call", "returns the upstream's status, headers and body", async () => {
    const res = await executeCall(client, "inventory", {
      method: "POST",
      path: "/reserve",
      query: "sku=1",
      headers: { "content-type": "application/json", "x-request": "r-1" },
      body: JSON.stringify({ qty: 2 }),
      idempotencyKey: "order-1",
      timeoutMs: 5_000,
    });
    assert.equal(res.status, 201);
    assert.equal(res.ok, true);
    assert.equal(res.attempts, 1);
    assert.equal(res.breakerState, BreakerState.CLOSED);
    assert.equal(res.header("X-Upstream"), "inventory");
    assert.deepEqual(res.json(), { method: "POST", url: "/reserve?sku=1", body: '{"qty":2}', idem: "order-1" });
    assert.equal(res.text(), new TextDecoder().decode(res.body));
    const got = seen.find((s) => s.url === "/reserve?sku=1");
    assert.equal(got?.headers["x-request"], "r-1");

    // Any HTTP status is a response; failures count against the upstream's
    // breaker, which then refuses the call without reaching the upstream.
    for (let i = 0; i < 2; i++) {
      const bad = await executeCall(client, "inventory", { method: "GET", path: "/fail" });
      assert.equal(bad.status, 500);
      assert.equal(bad.ok, false);
      assert.equal(bad.text(), "broken");
    }
    const before = seen.length;
    await assert.rejects(executeCall(client, "inventory", { method: "GET", path: "/reserve" }), (e: unknown) => {
      assert.ok(e instanceof BreakerOpenError, `got ${e}`);
      assert.ok((e.retryDelayMs ?? 0) > 0);
      return true;
    });
    assert.equal(seen.length, before, "the upstream was called although its breaker is open");
  });
});
