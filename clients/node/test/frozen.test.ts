// A sidecar frozen (SIGSTOP) while this client holds a lock through it: the
// lease ends by the client's own clock (RENEWAL_OVERDUE) before another
// sidecar on the same Redis can grant the lock again, and every helper
// returns within its deadline. Two sidecars A and B on one real Redis.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

import {
  acquireLock,
  DeadlineExceededError,
  executeCall,
  guard,
  idempotent,
  LamportClock,
  publish,
  startSaga,
  subscribe,
  LeaseLostError,
  LostReason,
  ReleaseUnconfirmedError,
  withLock,
  type Lease,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, Redis, Sidecar } from "./harness.js";
import { scenario } from "./scenarios.js";

let redis: Redis;

before(async () => {
  redis = await Redis.start();
});

after(async () => {
  await redis?.stop();
});

const uniqueKey = (what: string) => `node-test/${what}/${randomUUID()}`;

/** Settles like p, with the monotonic time it settled at; fails if that takes longer than ms (a hang). */
async function timed<T>(p: Promise<T>, ms: number, what: string): Promise<{ value?: T; error?: unknown; at: number }> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} did not return within ${ms} ms`)), ms)));
  try {
    return await Promise.race([
      p.then(
        (value) => ({ value, at: performance.now() }),
        (error: unknown) => ({ error, at: performance.now() }),
      ),
      hang,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits (real time: the session renews every ttl/3) until the sidecar confirmed a renewal after the grant. */
async function renewedOnce(lease: Lease): Promise<void> {
  const granted = lease.renewedAt;
  for (let i = 0; lease.renewedAt === granted; i++) {
    if (i > 200) throw new Error("no renewal within 4 s");
    await sleep(20);
  }
}

scenario(
  "lock-frozen-sidecar",
  "sidecar A frozen mid-hold (TTL 2 s): RENEWAL_OVERDUE within 2.2 s of the last renewal, before B grants the lock; every helper returns",
  async (t) => {
    const a = await Sidecar.start(redis);
    const b = await Sidecar.start(redis);
    const ca: SidecarClient = clientOf(a, { timeoutMs: 3_000 });
    const cb: SidecarClient = clientOf(b);
    try {
      const key = uniqueKey("frozen");
      let entered!: (l: Lease) => void;
      const inFn = new Promise<Lease>((r) => (entered = r));
      let lostAt = 0;
      const held = timed(withLock(
        ca,
        key,
        async (signal, lease) => {
          entered(lease);
          await new Promise((res) => signal.addEventListener("abort", res, { once: true }));
          lostAt = performance.now();
          throw signal.reason;
        },
        { ttlMs: 2_000 },
      ), 15_000, "withLock");
      const lease = await inFn;
      await renewedOnce(lease);
      // The explicit handle, through A too.
      const handle = await acquireLock(ca, uniqueKey("frozen-handle"), { ttlMs: 2_000 });

      await a.frozen();
      // A second client waits for the lock through B: the store grants it
      // once A's last renewal expires there.
      let bAt = 0;
      const other = timed(withLock(
        cb,
        key,
        (_s, l) => {
          bAt = performance.now();
          return l.fencingToken;
        },
        { waitMs: 15_000, ttlMs: 2_000 },
      ), 15_000, "withLock through B");
      // Acquiring through the frozen A: bounded by its timeoutMs.
      const acquiring = timed(withLock(ca, uniqueKey("frozen-acquire"), () => "never", { timeoutMs: 1_000 }), 5_000, "withLock acquiring through frozen A");
      const extending = timed(handle.extend(), 5_000, "extend through frozen A");

      const h = await held;
      const lastRenewal = lease.renewedAt;
      assert.ok(h.error instanceof LeaseLostError, `withLock: got ${h.error ?? h.value}`);
      assert.equal(h.error.lostReason, LostReason.RENEWAL_OVERDUE);
      assert.ok(lostAt > 0, "fn's signal did not abort");
      assert.ok(lostAt - lastRenewal <= 2_200, `loss signalled ${Math.round(lostAt - lastRenewal)} ms after the last renewal received (bound 2200 ms)`);
      assert.ok(h.at - lastRenewal <= 2_200, `withLock returned ${Math.round(h.at - lastRenewal)} ms after the last renewal received`);

      const o = await other;
      assert.ok(typeof o.value === "bigint", `withLock through B: got ${o.error}`);
      assert.ok(o.value > lease.fencingToken, "B's grant has no greater fencing token");
      t.diagnostic(
        `loss signalled ${(lostAt - lastRenewal).toFixed(1)} ms after the last renewal received; withLock returned ${(h.at - lastRenewal).toFixed(1)} ms after it; B acquired ${(bAt - lostAt).toFixed(1)} ms after the loss`,
      );
      assert.ok(lostAt < bAt, `B acquired the lock ${Math.round(lostAt - bAt)} ms before A's holder was told it lost it`);

      const acq = await acquiring;
      assert.ok(acq.error instanceof DeadlineExceededError, `acquire through frozen A: got ${acq.error ?? acq.value}`);
      const ext = await extending;
      assert.ok(ext.error instanceof LeaseLostError, `extend: got ${ext.error}`);
      assert.equal(ext.error.lostReason, LostReason.RENEWAL_OVERDUE);
      assert.ok(ext.at - handle.renewedAt <= 2_200, `extend returned ${Math.round(ext.at - handle.renewedAt)} ms after the grant`);
      const rel = await timed(handle.release(), 1_000, "release of the lost handle");
      assert.equal(rel.error, ext.error);

      // Every other helper through the frozen A gives up at its client's
      // 3 s deadline (subscribe: its confirmation, bounded by the same),
      // and none runs the caller's function.
      const never = () => {
        throw new Error("must not run");
      };
      const helpers: Array<[string, () => Promise<unknown>]> = [
        ["idempotent", () => idempotent(ca, uniqueKey("frozen-op"), "fp", never, { unavailableRetries: 0, waitMs: 0 })],
        ["guard", () => guard(ca, "frozen", never)],
        ["executeCall", () => executeCall(ca, "none", { path: "/" })],
        ["startSaga", () => startSaga(ca, `frozen-${randomUUID()}`, "frozen")],
        ["LamportClock.stamp", () => new LamportClock(ca, "frozen").stamp()],
        ["publish", () => publish(ca, "node-test.frozen", "x")],
        ["subscribe", () => subscribe(ca, "node-test.frozen", "g", "c", never)],
      ];
      for (const [name, call] of helpers) {
        const r = await timed(call(), 3_000 + 1_000, `${name} through frozen A`);
        assert.ok(r.error instanceof DeadlineExceededError, `${name} through frozen A: got ${String(r.error ?? r.value)}`);
      }
    } finally {
      a.thaw();
      ca.close();
      cb.close();
      await a.stop();
      await b.stop();
    }
  },
);

test("frozen after fn resolved: the release waits until the local deadline at most, then ReleaseUnconfirmedError with fn's result", async () => {
  const a = await Sidecar.start(redis);
  const ca = clientOf(a, { timeoutMs: 10_000 });
  try {
    let frozen!: () => void;
    const whenFrozen = new Promise<void>((r) => (frozen = r));
    let leaseSeen: Lease | undefined;
    const held = timed(withLock(
      ca,
      uniqueKey("frozen-release"),
      async (_signal, lease) => {
        leaseSeen = lease;
        await whenFrozen;
        return "done";
      },
      { ttlMs: 2_000 },
    ), 10_000, "withLock");
    while (!leaseSeen) await sleep(10); // real time: until fn runs
    await a.frozen();
    frozen();
    const r = await held;
    assert.ok(r.error instanceof ReleaseUnconfirmedError, `got ${r.error ?? r.value}`);
    assert.equal(r.error.result, "done");
    // Bounded by the lease's local deadline (1.8 s after the last renewal),
    // not by the client's 10 s call deadline.
    assert.ok(r.at < leaseSeen.renewedAt + 2_200, `returned ${Math.round(r.at - leaseSeen.renewedAt)} ms after the last renewal`);
  } finally {
    a.thaw();
    ca.close();
    await a.stop();
  }
});
