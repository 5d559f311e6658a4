// examples/node/seed.mjs, installed as its README says and run against the
// real sidecar: the charge happens once, the stock is reserved under the
// lock and a stale fencing token is refused, the order event is appended
// once and redelivered after a failed handling.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Redis, repoRoot, runNode, Sidecar } from "./harness.js";

let redis: Redis;
let sidecar: Sidecar;

before(async () => {
  redis = await Redis.start();
  sidecar = await Sidecar.start(redis);
});

after(async () => {
  await sidecar?.stop();
  await redis?.stop();
});

test("examples/node/seed.mjs: charged once, stock reserved with fencing", async () => {
  const dir = join(repoRoot, "examples/node");
  // npm install links the package (file:../../clients/node); express (for
  // express-app.mjs) comes from npm's cache, else the registry.
  const npm = spawnSync("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: dir, encoding: "utf8", timeout: 60_000 });
  assert.equal(npm.status, 0, `npm install in examples/node failed:\n${npm.stdout}\n${npm.stderr}`);

  const r = await runNode(["seed.mjs"], { cwd: dir, env: { SIDECAR_ADDR: sidecar.addr }, timeoutMs: 60_000 });
  assert.equal(r.code, 0, `seed.mjs failed:\n${r.stdout}\n${r.stderr}`);
  const out = r.stdout;

  const charges = [...out.matchAll(/^charge attempt (\d): 201 (.*)$/gm)];
  assert.equal(charges.length, 3, out);
  const bodies = new Set(charges.map((m) => m[2]));
  assert.equal(bodies.size, 1, `different results:\n${out}`);
  const charge = JSON.parse([...bodies][0]!);
  assert.equal(charge.amountCents, 4200);
  assert.match(charge.chargeId, /^ch_1_/);
  assert.match(out, /^ledger: 1 charge\(s\) for order-/m);
  assert.match(out, /^charged exactly once: true$/m);
  assert.match(out, /^every attempt returned the same result: true$/m);

  const reserves = [...out.matchAll(/^reserve by worker-[ab]: token (\d+), stock (\d) -> (\d)$/gm)];
  assert.equal(reserves.length, 2, out);
  assert.deepEqual(reserves.map((m) => [m[2], m[3]]), [["5", "3"], ["3", "1"]], "the reservations overlapped");
  assert.ok(BigInt(reserves[1]![1]!) > BigInt(reserves[0]![1]!), "fencing tokens did not increase");
  assert.match(out, /^stale write with token \d+ refused: true$/m);
  assert.match(out, /^announced once: true$/m);
  assert.match(out, /^ship order-\S+: courier unavailable on delivery 1, nacked$/m);
  assert.match(out, /^ship order-\S+: shipped on delivery 2, acked$/m);
  assert.match(out, /^shipped once after a redelivery: true$/m);
  assert.match(out, /^seed scenario OK$/m);
});
