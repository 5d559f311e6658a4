// After the sidecar restarts on the same address, the next call succeeds at
// once, however long calls failed while it was down: the transport has no
// reconnect backoff that could have grown meanwhile.

import assert from "node:assert/strict";
import { after, before } from "node:test";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

import { SidecarUnreachableError } from "@seed-a88e5317/resilience-sidecar";

import { clientOf, Redis, Sidecar } from "./harness.js";
import { scenario } from "./scenarios.js";

let redis: Redis;

before(async () => {
  redis = await Redis.start();
});

after(async () => {
  await redis?.stop();
});

scenario("reconnect-after-restart", "the first call after a restart succeeds within 1 s, after 9 s of failed calls", async (t) => {
  const first = await Sidecar.start(redis);
  const c = clientOf(first);
  let second: Sidecar | undefined;
  try {
    assert.equal((await c.lock.getLock({ key: "node-test/reconnect" })).held, false);
    await first.stop(); // SIGKILL

    // Real time: 9 s of failed calls, long enough for a gRPC-style
    // exponential backoff (1 s, 1.6 s, 2.6 s, 4.1 s, ...) to grow past
    // several seconds.
    const downUntil = performance.now() + 9_000;
    let failures = 0;
    while (performance.now() < downUntil) {
      await assert.rejects(c.lock.getLock({ key: "node-test/reconnect" }, { timeoutMs: 3_000 }), SidecarUnreachableError);
      failures++;
      await sleep(100);
    }
    assert.ok(failures > 10);

    second = await Sidecar.start(redis, [], { addr: first.addr });
    const start = performance.now();
    const r = await c.lock.getLock({ key: "node-test/reconnect" }, { timeoutMs: 3_000 });
    const took = performance.now() - start;
    assert.equal(r.held, false);
    t.diagnostic(`first call after the restart took ${took.toFixed(1)} ms (after ${failures} failed calls)`);
    assert.ok(took < 1_000, `the first call after the restart took ${Math.round(took)} ms`);
  } finally {
    c.close();
    await first.stop();
    await second?.stop();
  }
});
