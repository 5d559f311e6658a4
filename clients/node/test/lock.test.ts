// withLock against the real sidecar on a real redis-server.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  acquireLock,
  InvalidArgumentError,
  LeaseLostError,
  LostReason,
  NotAcquiredError,
  ReleaseUnconfirmedError,
  SidecarError,
  SidecarUnreachableError,
  timestampMs,
  withLock,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, packageRoot, Redis, redisCommand, runNode, Sidecar, tempDir } from "./harness.js";
import { scenario } from "./scenarios.js";

let redis: Redis;
let sidecar: Sidecar;
let client: SidecarClient;

before(async () => {
  redis = await Redis.start();
  sidecar = await Sidecar.start(redis);
  client = clientOf(sidecar);
});

after(async () => {
  client?.close();
  await sidecar?.stop();
  await redis?.stop();
});

const uniqueKey = (what: string) => `node-test/${what}/${randomUUID()}`;

/** Waits until signal aborts, or fails after ms. */
function aborted(signal: AbortSignal, ms: number): Promise<unknown> {
  return new Promise((res, rej) => {
    if (signal.aborted) return res(signal.reason);
    const t = setTimeout(() => rej(new Error(`signal not aborted within ${ms} ms`)), ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      res(signal.reason);
    });
  });
}

describe("withLock", () => {
  scenario("lock-contention-fencing", "two client processes contending for one lock lose no update; fencing tokens strictly increase", async () => {
    const dir = tempDir("lock-contention-");
    try {
      const rounds = 25;
      const run = async (mode: string[]) => {
        const file = join(dir.path, `shared-${randomUUID()}.json`);
        writeFileSync(file, JSON.stringify({ count: 0, fence: "0", log: [], stale: 0 }));
        const key = uniqueKey("contention");
        const startAt = String(Date.now() + 1500); // both start together, after their connection is up
        const worker = join(packageRoot, "build-test/test/fixtures/lock-worker.js");
        const env = { SIDECAR_ADDR: sidecar.addr };
        const results = await Promise.all(
          ["worker-a", "worker-b"].map((name) => runNode([worker, file, key, name, String(rounds), startAt, ...mode], { env, timeoutMs: 60_000 })),
        );
        for (const r of results) assert.equal(r.code, 0, `worker failed:\n${r.stdout}\n${r.stderr}`);
        return { shared: JSON.parse(readFileSync(file, "utf8")), results };
      };

      // Control: without the lock the same workers lose updates, so the
      // assertion below can fail.
      const control = await run(["--no-lock"]);
      assert.ok(control.shared.count < 2 * rounds, `control run without the lock lost no update (count ${control.shared.count}); the test cannot tell`);

      const { shared, results } = await run([]);
      assert.equal(shared.count, 2 * rounds, `lost updates under the lock: ${JSON.stringify(shared)}`);
      assert.equal(shared.stale, 0, "a holder presented a stale fencing token");
      assert.equal(shared.log.filter((n: string) => n === "worker-a").length, rounds);
      assert.equal(shared.log.filter((n: string) => n === "worker-b").length, rounds);
      // Fencing tokens: unique and, in the order the resource saw them, increasing.
      const perWorker = results.map((r) => (JSON.parse(r.stdout.trim().split("\n").pop()!).tokens as string[]).map(BigInt));
      for (const ts of perWorker) {
        for (let i = 1; i < ts.length; i++) assert.ok(ts[i]! > ts[i - 1]!, `a worker's fencing tokens did not increase: ${ts.join(",")}`);
      }
      const tokens = perWorker.flat();
      assert.equal(new Set(tokens).size, 2 * rounds, "a fencing token was handed out twice");
    } finally {
      dir.remove();
    }
  });

  test("resolves with fn's result and releases the lock", async () => {
    const key = uniqueKey("release");
    let seen: bigint | undefined;
    const out = await withLock(client, key, async (signal, lease) => {
      assert.equal(signal.aborted, false);
      assert.equal(lease.key, key);
      assert.ok(lease.fencingToken > 0n);
      assert.ok(lease.expireTime.getTime() > Date.now());
      seen = lease.fencingToken;
      const held = await client.lock.getLock({ key });
      assert.equal(held.held, true);
      assert.equal(held.holder?.owner, "node-test");
      return "done";
    }, { owner: "node-test" });
    assert.equal(out, "done");
    const after = await client.lock.getLock({ key });
    assert.equal(after.held, false, "lock still held after withLock resolved");
    assert.ok(after.lastFencingToken >= seen!);
  });

  test("rejects with fn's error and still releases the lock", async () => {
    const key = uniqueKey("fn-error");
    const boom = new Error("boom");
    await assert.rejects(withLock(client, key, () => { throw boom; }), (e) => e === boom);
    assert.equal((await client.lock.getLock({ key })).held, false);
  });

  test("NotAcquiredError when the wait ends without the lock", async () => {
    const key = uniqueKey("not-acquired");
    await withLock(client, key, async () => {
      const start = Date.now();
      await assert.rejects(withLock(client, key, () => "never", { waitMs: 300 }), (e: unknown) => {
        assert.ok(e instanceof NotAcquiredError, `got ${e}`);
        assert.equal(e.key, key);
        assert.equal(e.holder, "first");
        assert.ok(e.fencingToken > 0n);
        return true;
      });
      assert.ok(Date.now() - start >= 250, "did not wait");
    }, { owner: "first" });
  });

  test("a waiter gets the lock when the holder releases it", async () => {
    const key = uniqueKey("handover");
    let release!: () => void;
    const holding = new Promise<void>((r) => (release = r));
    let firstToken = 0n;
    const first = withLock(client, key, async (_s, lease) => {
      firstToken = lease.fencingToken;
      await holding;
    });
    await sleep(100);
    const second = withLock(client, key, (_s, lease) => lease.fencingToken, { waitMs: 10_000 });
    await sleep(200);
    release();
    await first;
    const secondToken = await second;
    assert.ok(secondToken > firstToken, `fencing token did not grow: ${firstToken} then ${secondToken}`);
  });

  test("max_hold: fn's signal aborts and withLock rejects with LeaseLostError", async () => {
    const key = uniqueKey("max-hold");
    let signalSeen: AbortSignal | undefined;
    const start = Date.now();
    await assert.rejects(
      withLock(
        client,
        key,
        async (signal) => {
          signalSeen = signal;
          const reason = await aborted(signal, 10_000);
          assert.ok(reason instanceof LeaseLostError);
          return "finished anyway";
        },
        { ttlMs: 2_000, maxHoldMs: 300 },
      ),
      (e: unknown) => {
        assert.ok(e instanceof LeaseLostError, `got ${e}`);
        assert.ok(e instanceof SidecarError);
        assert.equal(e.reason, "LEASE_LOST");
        assert.equal(e.lostReason, "MAX_HOLD");
        return true;
      },
    );
    assert.equal(signalSeen?.aborted, true);
    assert.ok(Date.now() - start < 5_000);
    assert.equal((await client.lock.getLock({ key })).held, false, "the sidecar did not release the lock at max_hold");
  });

  test("lease lost in the store: renewal fails, fn's signal aborts, LeaseLostError", async () => {
    const key = uniqueKey("store-lost");
    await assert.rejects(
      withLock(
        client,
        key,
        async (signal) => {
          // The lock's bookkeeping vanishes (as after a failover): the
          // next renewal (every ttl/3) finds the lease gone.
          // Key layout: docs/redis-keys.md ('/' in the name is escaped).
          const reply = await redisCommand(redis.port, "DEL", `rs:{default/lock/${key.replaceAll("/", "%2F")}}:lock`);
          assert.equal(reply, ":1\r\n", "lock key not found in redis");
          await aborted(signal, 10_000);
          throw signal.reason;
        },
        { ttlMs: 900 },
      ),
      (e: unknown) => {
        assert.ok(e instanceof LeaseLostError, `got ${e}`);
        assert.equal(e.lostReason, "LEASE_LOST");
        return true;
      },
    );
  });

  test("the session's opening is validated: InvalidArgumentError naming acquire.key", async () => {
    await assert.rejects(withLock(client, "", () => "never"), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError, `got ${e}`);
      assert.ok(e.violations.some((v) => v.field === "acquire.key"), JSON.stringify(e.violations));
      return true;
    });
  });

  test("aborting opts.signal during fn reaches fn; the lock is released, not lost", async () => {
    const key = uniqueKey("abort-fn");
    const ctl = new AbortController();
    const reason = new Error("request cancelled");
    await assert.rejects(
      withLock(client, key, async (signal) => {
        setTimeout(() => ctl.abort(reason), 100);
        await aborted(signal, 5_000);
        assert.equal(signal.reason, reason);
        throw signal.reason;
      }, { signal: ctl.signal }),
      (e) => e === reason,
    );
    assert.equal((await client.lock.getLock({ key })).held, false);
  });

  test("aborting opts.signal ends the wait with the signal's reason", async () => {
    const key = uniqueKey("abort-wait");
    await withLock(client, key, async () => {
      const ctl = new AbortController();
      const reason = new Error("gave up");
      setTimeout(() => ctl.abort(reason), 200);
      await assert.rejects(withLock(client, key, () => "never", { waitMs: 20_000, signal: ctl.signal }), (e) => e === reason);
    });
  });
});

/** Resolves with what p settled with (the error when it rejected), or fails the test if p has not settled within ms: a hang. */
async function settles<T>(p: Promise<T>, ms: number, what: string): Promise<{ value?: T; error?: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} did not return within ${ms} ms`)), ms)));
  try {
    return await Promise.race([p.then((value) => ({ value }), (error: unknown) => ({ error })), hang]);
  } finally {
    clearTimeout(timer);
  }
}

describe("acquireLock: the explicit handle", () => {
  scenario("lock-explicit-handle", "acquire -> fencing token, locked() true, extend, release, locked() false", async () => {
    const key = uniqueKey("handle");
    const lock = await acquireLock(client, key, { ttlMs: 2_000, owner: "handle" });
    assert.equal(lock.key, key);
    assert.equal(lock.owner, "handle");
    assert.ok(lock.fencingToken > 0n);
    assert.equal(lock.locked(), true);
    assert.ok(lock.remainingMs() > 0);
    assert.ok(Math.abs(lock.deadline - lock.renewedAt - (2_000 - 200)) < 1e-6, "local deadline: t + ttl - max(ttl/10, 100 ms)");
    const held = await client.lock.getLock({ key });
    assert.equal(held.held, true);
    assert.equal(held.holder?.fencingToken, lock.fencingToken);
    await assert.rejects(acquireLock(client, key), (e: unknown) => {
      assert.ok(e instanceof NotAcquiredError, `got ${e}`);
      assert.equal(e.holder, "handle");
      assert.equal(e.fencingToken, lock.fencingToken);
      return true;
    });

    await lock.extend(30_000);
    assert.equal(lock.ttlMs, 30_000);
    assert.ok(Math.abs(lock.deadline - lock.renewedAt - (30_000 - 3_000)) < 1e-6);
    const extended = await client.lock.getLock({ key });
    // From 2 s to 30 s: the store's expiry moved far past the first one.
    assert.ok(timestampMs(extended.holder!.expireTime!) > timestampMs(held.holder!.expireTime!) + 20_000, "extend did not move the store's expiry");
    assert.ok(lock.expireTime.getTime() > Date.now() + 20_000);
    assert.equal(lock.locked(), true);

    await lock.release();
    assert.equal(lock.locked(), false);
    assert.equal(lock.remainingMs(), 0);
    assert.equal(lock.signal.aborted, false, "a release is not a loss");
    assert.equal((await client.lock.getLock({ key })).held, false);
    await lock.release(); // again: resolves at once
    await assert.rejects(lock.extend(), /after release/);

    const next = await acquireLock(client, key);
    assert.ok(next.fencingToken > lock.fencingToken, `fencing token did not grow: ${lock.fencingToken} then ${next.fencingToken}`);
    await next.release();
  });

  test("without extend the lease is lost at its local deadline: signal aborts with RENEWAL_OVERDUE, release rejects", async () => {
    const key = uniqueKey("handle-overdue");
    const lock = await acquireLock(client, key, { ttlMs: 500 });
    const reason = await aborted(lock.signal, 5_000);
    assert.ok(reason instanceof LeaseLostError, `got ${reason}`);
    assert.equal(reason.lostReason, LostReason.RENEWAL_OVERDUE);
    assert.equal(lock.locked(), false);
    await assert.rejects(lock.release(), (e) => e === reason);
    await assert.rejects(lock.extend(), (e) => e === reason);
  });

  test("extend after the store lost the lease: LeaseLostError (LEASE_LOST), signal aborted", async () => {
    const key = uniqueKey("handle-store-lost");
    const lock = await acquireLock(client, key, { ttlMs: 10_000 });
    const reply = await redisCommand(redis.port, "DEL", `rs:{default/lock/${key.replaceAll("/", "%2F")}}:lock`);
    assert.equal(reply, ":1\r\n", "lock key not found in redis");
    await assert.rejects(lock.extend(), (e: unknown) => {
      assert.ok(e instanceof LeaseLostError, `got ${e}`);
      assert.equal(e.lostReason, LostReason.LEASE_LOST);
      return true;
    });
    assert.equal(lock.signal.aborted, true);
    assert.equal(lock.locked(), false);
  });

  test("waitMs: acquired once the holder releases", async () => {
    const key = uniqueKey("handle-wait");
    const first = await acquireLock(client, key, { ttlMs: 5_000 });
    const second = acquireLock(client, key, { waitMs: 10_000 });
    await sleep(200); // real time: let the second call start waiting
    await first.release();
    const lock = await second;
    assert.ok(lock.fencingToken > first.fencingToken);
    await lock.release();
  });
});

describe("a sidecar killed mid-hold", () => {
  scenario("lock-killed-sidecar", "SIGKILL: the lease is signalled lost (STREAM_ENDED or RENEWAL_OVERDUE) and every helper returns", async () => {
    const sc = await Sidecar.start(redis);
    const c = clientOf(sc, { timeoutMs: 3_000 });
    try {
      let entered!: () => void;
      const inFn = new Promise<void>((r) => (entered = r));
      const held = settles(withLock(
        c,
        uniqueKey("killed"),
        async (signal) => {
          entered();
          await aborted(signal, 10_000);
          return "finished anyway";
        },
        { ttlMs: 2_000 },
      ), 15_000, "withLock");
      await inFn;
      const handle = await acquireLock(c, uniqueKey("killed-handle"), { ttlMs: 5_000 });
      await sc.stop(); // SIGKILL

      const r = await held;
      assert.ok(r.error instanceof LeaseLostError, `withLock: got ${r.error ?? r.value}`);
      assert.ok(
        [LostReason.STREAM_ENDED, LostReason.RENEWAL_OVERDUE].includes(r.error.lostReason as "STREAM_ENDED"),
        `lostReason ${r.error.lostReason}`,
      );

      // The handle: an extend cannot reach the sidecar (the lease is still
      // ours until its local deadline); the release is reported unconfirmed.
      const ext = await settles(handle.extend(), 5_000, "extend");
      assert.ok(ext.error instanceof SidecarUnreachableError, `extend: got ${ext.error}`);
      assert.equal(handle.locked(), true);
      const rel = await settles(handle.release(), 5_000, "release");
      assert.ok(rel.error instanceof ReleaseUnconfirmedError, `release: got ${rel.error}`);
      assert.equal(handle.locked(), false);
    } finally {
      c.close();
      await sc.stop();
    }
  });
});
