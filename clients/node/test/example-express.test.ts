// examples/node/express-app.mjs, installed as its header says and run as a
// real process against the real sidecar: a retried payment is charged once
// and replayed, a retry during the charge gets 409, a reused key 422, a
// request without the header 400; SIGTERM stops it cleanly.

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Redis, repoRoot, Sidecar } from "./harness.js";

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

async function post(base: string, body: unknown, key?: string) {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (key !== undefined) headers["Idempotency-Key"] = key;
  const r = await fetch(`${base}/payments`, { method: "POST", headers, body: JSON.stringify(body) });
  return { status: r.status, headers: r.headers, body: await r.text() };
}

test("examples/node/express-app.mjs: a retried payment is charged once", async () => {
  const dir = join(repoRoot, "examples/node");
  // npm install links the package (file:../../clients/node); express comes
  // from npm's cache, else the registry.
  const npm = spawnSync("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: dir, encoding: "utf8", timeout: 60_000 });
  assert.equal(npm.status, 0, `npm install in examples/node failed:\n${npm.stdout}\n${npm.stderr}`);

  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, PORT: "0", SIDECAR_ADDR: sidecar.addr, PROVIDER_DELAY_MS: "1500" };
  const app = spawn(process.execPath, ["express-app.mjs"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  app.stdout.on("data", (b: Buffer) => (out += b.toString()));
  app.stderr.on("data", (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((res) => app.on("exit", (code) => res(code)));
  const waitFor = async (re: RegExp): Promise<RegExpMatchArray> => {
    for (let i = 0; i < 1500; i++) {
      const m = out.match(re);
      if (m) return m;
      if (app.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`express-app.mjs never printed ${re}:\n${out}`);
  };
  try {
    const base = (await waitFor(/listening on (http:\/\/\S+)/))[1]!;
    const run = randomUUID().slice(0, 8);

    const pay = { orderId: `o-${run}`, amountCents: 4200 };
    const first = await post(base, pay, `pay-${run}`);
    assert.equal(first.status, 201, first.body);
    const charge = JSON.parse(first.body);
    assert.equal(charge.orderId, pay.orderId);
    assert.equal(first.headers.get("location"), `/payments/${charge.chargeId}`);

    const retry = await post(base, pay, `pay-${run}`);
    assert.equal(retry.status, 201);
    assert.equal(retry.headers.get("idempotent-replayed"), "true");
    assert.equal(retry.body, first.body);
    assert.equal(retry.headers.get("location"), first.headers.get("location"));

    // A retry while the charge is running (the provider takes 1.5 s; the
    // duplicate is sent once the app logged that it is charging).
    const pay2 = { orderId: `o2-${run}`, amountCents: 990 };
    const slow = post(base, pay2, `pay2-${run}`);
    await waitFor(new RegExp(`charging ${pay2.orderId}`));
    const during = await post(base, pay2, `pay2-${run}`);
    assert.equal(during.status, 409, during.body);
    assert.equal(JSON.parse(during.body).code, "IDEMPOTENCY_KEY_IN_USE");
    assert.match(during.headers.get("retry-after") ?? "", /^[1-9]\d*$/);
    assert.equal((await slow).status, 201);

    const reused = await post(base, { ...pay, amountCents: 1 }, `pay-${run}`);
    assert.equal(reused.status, 422);
    assert.equal(JSON.parse(reused.body).code, "IDEMPOTENCY_KEY_REUSED");

    const missing = await post(base, pay);
    assert.equal(missing.status, 400);
    assert.equal(JSON.parse(missing.body).code, "IDEMPOTENCY_KEY_MISSING");

    const list = JSON.parse(await (await fetch(`${base}/payments`)).text());
    assert.deepEqual(
      list.charges.map((c: { orderId: string }) => c.orderId),
      [pay.orderId, pay2.orderId],
      "each payment charged exactly once",
    );

    app.kill("SIGTERM");
    assert.equal(await exited, 0, out);
    assert.match(out, /^stopped$/m);
  } finally {
    app.kill("SIGKILL");
  }
});
