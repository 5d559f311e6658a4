// Rate limits (take, rateLimited) and bulkheads (withPermit) against the
// real sidecar on a real Redis, with a config file declaring the limiters.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  BulkheadFullError,
  DeadlineExceededError,
  InvalidArgumentError,
  LeaseLostError,
  LimiterUnknownError,
  LostReason,
  rateLimited,
  RateLimitedError,
  take,
  withPermit,
  type BulkheadPermit,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, configFile, Redis, Sidecar } from "./harness.js";
import { scenario } from "./scenarios.js";

// "hourly" refills one token an hour (nothing refills during a test),
// "slow" one every 3 s (long enough for a refusal, short enough to wait for).
const CONFIG = `ratelimits:
  hourly: {algorithm: gcra, rate: 1, period: 1h, burst: 3}
  slow: {algorithm: gcra, rate: 1, period: 3s, burst: 1}
  window: {algorithm: sliding_window, limit: 2, window: 1h}
`;

let redis: Redis;
let cfg: ReturnType<typeof configFile>;
let sidecar: Sidecar;
let client: SidecarClient;

before(async () => {
  redis = await Redis.start();
  cfg = configFile(CONFIG);
  sidecar = await Sidecar.start(redis, ["--config", cfg.path]);
  client = clientOf(sidecar);
});

after(async () => {
  client?.close();
  await sidecar?.stop();
  await redis?.stop();
  cfg?.remove();
});

const unique = (what: string) => `node-test/${what}/${randomUUID()}`;

scenario("ratelimit-take-decision", "take answers a typed decision: allowed with the remaining capacity, then refused with a retry delay", async () => {
  for (const [limiter, capacity] of [["hourly", 3n], ["window", 2n]] as const) {
    const key = unique(limiter);
    for (let i = 0n; i < capacity; i++) {
      const d = await take(client, limiter, { key });
      assert.ok(d.allowed, `${limiter} take ${i + 1n}: ${JSON.stringify(d, (_, v) => (typeof v === "bigint" ? String(v) : v))}`);
      assert.equal(d.remaining, capacity - 1n - i);
      assert.equal(d.limit, capacity);
      assert.equal(d.retryAfterMs, 0);
      assert.ok(d.resetAfterMs > 0);
    }
    const d = await take(client, limiter, { key });
    assert.equal(d.allowed, false);
    assert.equal(d.remaining, 0n);
    assert.equal(d.limit, capacity);
    assert.ok(d.retryAfterMs > 0 && d.retryAfterMs <= 3_600_000, `retryAfterMs ${d.retryAfterMs}`);
  }
  const key = unique("cost");
  const d = await take(client, "hourly", { key, cost: 2 });
  assert.ok(d.allowed && d.remaining === 1n);
  const refused = await take(client, "hourly", { key, cost: 2n });
  assert.ok(!refused.allowed && refused.remaining === 1n && refused.retryAfterMs > 0);
});

test("take and rateLimited errors are typed, and fn does not run", async () => {
  for (const [limiter, cost, cls] of [
    ["nope", 1, LimiterUnknownError],
    ["hourly", -1, InvalidArgumentError],
    ["hourly", 4, InvalidArgumentError],
  ] as const) {
    await assert.rejects(take(client, limiter, { key: "k", cost }), cls);
    let ran = false;
    const f = rateLimited(client, limiter, () => (ran = true), { key: "k", cost });
    await assert.rejects(f(), cls);
    assert.equal(ran, false);
  }
});

scenario("ratelimit-wait-then-typed-error", "rateLimited runs fn when the cost fits, rejects with RateLimitedError (retry delay) when it does not fit within the wait, and waits for it", async () => {
  const prefix = unique("wait");
  const runs: string[] = [];
  const work = (user: string) => {
    runs.push(user);
    return user;
  };
  const call = rateLimited(client, "slow", work, { key: (user) => `${prefix}/${user}`, waitMs: 100 });
  const patient = rateLimited(client, "slow", work, { key: (user) => `${prefix}/${user}`, waitMs: 10_000 });

  assert.equal(await call("a"), "a");
  const err = await call("a").then(
    () => assert.fail("a call past the limit ran"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof RateLimitedError, `got ${err}`);
  assert.deepEqual(runs, ["a"], "a refused call must not run");
  assert.equal(err.limiter, "slow");
  assert.equal(err.key, `${prefix}/a`);
  assert.equal(err.cost, 1n);
  assert.ok(err.retryAfterMs > 0 && err.retryAfterMs <= 3_000, `retryAfterMs ${err.retryAfterMs}`);
  assert.equal(err.decision.allowed, false);
  // The token comes back within 3 s: a wait of 10 s gets it.
  assert.equal(await patient("a"), "a");
  assert.deepEqual(runs, ["a", "a"]);
  assert.equal((await take(client, "slow", { key: `${prefix}/a` })).allowed, false, "the waited-for token was taken");
  assert.equal(await call("b"), "b", "each key has its own count");
});

scenario("bulkhead-limit-holds", "withPermit through two sidecars: never more than the limit inside, the limit reached, every caller served; BulkheadFullError without a wait", async () => {
  const b = await Sidecar.start(redis);
  const clients = [client, clientOf(b)];
  try {
    const name = unique("bulkhead");
    const limit = 2, workers = 6, calls = 4;
    let inside = 0, most = 0;
    const tokens = new Set<bigint>();
    const work = async (signal: AbortSignal, p: BulkheadPermit) => {
      inside++;
      most = Math.max(most, inside);
      assert.ok(inside <= limit, `${inside} inside a bulkhead of ${limit}`);
      assert.ok(!tokens.has(p.fencingToken), `token ${p.fencingToken} granted twice`);
      tokens.add(p.fencingToken);
      await sleep(20); // real time: the others queue up meanwhile
      inside--;
      signal.throwIfAborted();
    };
    await Promise.all(
      Array.from({ length: workers }, async (_, w) => {
        for (let i = 0; i < calls; i++) {
          await withPermit(clients[w % 2]!, name, limit, work, { waitMs: 60_000, owner: `worker-${w}` });
        }
      }),
    );
    assert.equal(most, limit);
    assert.equal(tokens.size, workers * calls);

    // Full: two holders inside, a third that does not wait is refused.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const entered: Promise<void>[] = [];
    const holders = Array.from({ length: limit }, () => {
      let inFn!: () => void;
      entered.push(new Promise<void>((r) => (inFn = r)));
      return withPermit(client, name, limit, async () => {
        inFn();
        await released;
      });
    });
    await Promise.all(entered);
    let ran = false;
    const full = await withPermit(client, name, limit, () => (ran = true)).then(
      () => assert.fail("granted past the limit"),
      (e: unknown) => e,
    );
    assert.ok(full instanceof BulkheadFullError, `got ${full}`);
    assert.equal(full.held, limit);
    assert.equal(full.limit, limit);
    assert.equal(ran, false);
    release();
    await Promise.all(holders);
    assert.equal((await client.semaphore.getSemaphore({ name })).held, 0);
  } finally {
    clients[1]!.close();
    await b.stop();
  }
});

test("withPermit: max hold is a LeaseLostError; fn's error passes through; a bad limit is InvalidArgumentError", async () => {
  const name = unique("permit-errors");
  let reason: unknown;
  await assert.rejects(
    withPermit(client, name, 1, async (signal) => {
      await new Promise((res) => signal.addEventListener("abort", res, { once: true }));
      reason = signal.reason;
    }, { ttlMs: 1_000, maxHoldMs: 300 }),
    (e: unknown) => e instanceof LeaseLostError && e.lostReason === "MAX_HOLD",
  );
  assert.ok(reason instanceof LeaseLostError);
  await assert.rejects(withPermit(client, name, 1, () => { throw new RangeError("boom"); }), RangeError);
  assert.equal((await client.semaphore.getSemaphore({ name })).held, 0);
  await assert.rejects(withPermit(client, name, 0, () => assert.fail("ran")), InvalidArgumentError);
});

scenario("bulkhead-permit-lost-by-client-clock", "sidecar A frozen while a permit is held through it (TTL 2 s): RENEWAL_OVERDUE within 2.2 s of the last renewal, before B grants the permit", async (t) => {
  const a = await Sidecar.start(redis);
  const b = await Sidecar.start(redis);
  const ca = clientOf(a, { timeoutMs: 3_000 });
  const cb = clientOf(b);
  try {
    const name = unique("frozen");
    let entered!: (p: BulkheadPermit) => void;
    const inFn = new Promise<BulkheadPermit>((r) => (entered = r));
    let lostAt = 0;
    const held = withPermit(ca, name, 1, async (signal, permit) => {
      entered(permit);
      await new Promise((res) => signal.addEventListener("abort", res, { once: true }));
      lostAt = performance.now();
    }, { ttlMs: 2_000, owner: "a" }).then(
      () => ({ error: undefined as unknown, at: performance.now() }),
      (error: unknown) => ({ error, at: performance.now() }),
    );
    const permit = await inFn;
    const granted = permit.renewedAt;
    for (let i = 0; permit.renewedAt === granted; i++) {
      if (i > 200) throw new Error("no renewal within 4 s");
      await sleep(20); // real time: the session renews every ttl/3
    }
    await a.frozen();
    let bAt = 0;
    const other = withPermit(cb, name, 1, (_s, p) => {
      bAt = performance.now();
      return p.fencingToken;
    }, { waitMs: 15_000, ttlMs: 2_000, owner: "b" });
    const acquiring = withPermit(ca, `${name}/2`, 1, () => "never", { timeoutMs: 1_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );

    const h = await held;
    const lastRenewal = permit.renewedAt;
    assert.ok(h.error instanceof LeaseLostError, `withPermit: got ${h.error}`);
    assert.equal(h.error.lostReason, LostReason.RENEWAL_OVERDUE);
    assert.ok(lostAt > 0, "fn's signal did not abort");
    assert.ok(lostAt - lastRenewal <= 2_200, `loss signalled ${Math.round(lostAt - lastRenewal)} ms after the last renewal received`);
    assert.ok(h.at - lastRenewal <= 2_200, `withPermit returned ${Math.round(h.at - lastRenewal)} ms after the last renewal received`);
    const token = await other;
    assert.ok(token > permit.fencingToken, "B's grant has no greater fencing token");
    t.diagnostic(`permit lost ${(lostAt - lastRenewal).toFixed(1)} ms after the last renewal received; B acquired ${(bAt - lostAt).toFixed(1)} ms after the loss`);
    assert.ok(lostAt < bAt, "B acquired the permit before A's holder was told it lost it");
    assert.ok((await acquiring) instanceof DeadlineExceededError);
  } finally {
    a.thaw();
    ca.close();
    cb.close();
    await a.stop();
    await b.stop();
  }
});
