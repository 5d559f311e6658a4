// withLock against the real sidecar on a real redis-server.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  InvalidArgumentError,
  LeaseLostError,
  NotAcquiredError,
  SidecarError,
  withLock,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, packageRoot, Redis, redisCommand, runNode, Sidecar, tempDir } from "./harness.js";

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
  test("two client processes contending for one lock lose no update", async () => {
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
      const tokens = results.flatMap((r) => JSON.parse(r.stdout.trim().split("\n").pop()!).tokens as string[]).map(BigInt);
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
