// idempotent against the real sidecar on a real redis-server.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  fingerprint,
  idempotent,
  idempotentJson,
  IdempotencyKeyMismatchError,
  type IdempotentResult,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, Redis, Sidecar } from "./harness.js";
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
const text = (r: IdempotentResult) => new TextDecoder().decode(r.data);

describe("idempotent", () => {
  test("fingerprint is sha256 of the request", () => {
    assert.equal(fingerprint("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert.equal(fingerprint(new TextEncoder().encode("abc")), fingerprint("abc"));
  });

  test("a duplicate gets the stored result without running fn again", async () => {
    const key = uniqueKey("dup");
    const fp = fingerprint("charge 42");
    let runs = 0;
    const fn = async () => {
      runs++;
      return { data: `charge-${runs}`, metadata: { status: "201" } };
    };
    const first = await idempotent(client, key, fp, fn);
    const second = await idempotent(client, key, fp, fn);
    assert.equal(runs, 1, "fn ran twice");
    assert.equal(text(first), "charge-1");
    assert.deepEqual(second.data, first.data);
    assert.deepEqual(second.metadata, { status: "201" });
    assert.deepEqual(first.metadata, { status: "201" });
  });

  scenario("idempotent-run-once-stored-result", "concurrent duplicates: fn runs once, every caller gets its stored result", async () => {
    const key = uniqueKey("concurrent");
    const fp = fingerprint("req");
    let runs = 0;
    const fn = async () => {
      runs++;
      await sleep(300); // the others find it IN_PROGRESS and wait
      return { data: new Uint8Array([1, 2, 3, runs]) };
    };
    const results = await Promise.all(Array.from({ length: 6 }, () => idempotent(client, key, fp, fn)));
    assert.equal(runs, 1, "fn ran more than once");
    for (const r of results) assert.deepEqual([...r.data], [1, 2, 3, 1]);
  });

  test("IN_PROGRESS without a server-side wait is retried after retry_after", async () => {
    const key = uniqueKey("poll");
    const fp = fingerprint("req");
    let runs = 0;
    const slow = idempotent(client, key, fp, async () => {
      runs++;
      await sleep(400);
      return { data: "slow" };
    });
    await sleep(50);
    const polled = await idempotent(client, key, fp, async () => {
      runs++;
      return { data: "should not run" };
    }, { waitMs: 0 });
    assert.equal(text(polled), "slow");
    assert.equal(text(await slow), "slow");
    assert.equal(runs, 1);
  });

  test("fn's error releases the key: the next call runs fn again", async () => {
    const key = uniqueKey("release");
    const fp = fingerprint("req");
    let runs = 0;
    const failing = new Error("payment provider down");
    await assert.rejects(
      idempotent(client, key, fp, async () => {
        runs++;
        throw failing;
      }),
      (e) => e === failing,
    );
    const r = await idempotent(client, key, fp, async (exec) => {
      runs++;
      assert.equal(exec.attempt, 1, "a released key starts afresh");
      return { data: "ok" };
    });
    assert.equal(text(r), "ok");
    assert.equal(runs, 2);
  });

  test("a key reused with another fingerprint is IdempotencyKeyMismatchError", async () => {
    const key = uniqueKey("mismatch");
    await idempotent(client, key, fingerprint("a"), () => ({ data: "a" }));
    await assert.rejects(
      idempotent(client, key, fingerprint("b"), () => {
        throw new Error("must not run");
      }),
      (e: unknown) => {
        assert.ok(e instanceof IdempotencyKeyMismatchError, `got ${e}`);
        assert.equal(e.reason, "IDEMPOTENCY_KEY_MISMATCH");
        return true;
      },
    );
  });

  test("checkpoint records a recovery point", async () => {
    const key = uniqueKey("checkpoint");
    const r = await idempotent(client, key, fingerprint("x"), async (exec) => {
      await exec.checkpoint("charged", new TextEncoder().encode("ch_1"));
      const info = await client.idempotency.getIdempotency({ key, fingerprint: fingerprint("x") });
      assert.equal(info.recoveryPoint, "charged");
      return { data: "ok" };
    });
    assert.equal(text(r), "ok");
  });

  test("idempotentJson: the value round-trips as JSON; a duplicate gets the stored value without running fn", async () => {
    const key = uniqueKey("json");
    const fp = fingerprint(JSON.stringify({ order: 42 }));
    let runs = 0;
    const fn = async () => {
      runs++;
      await sleep(200); // the concurrent duplicate finds it IN_PROGRESS
      return { charge: `ch_${runs}`, amount: 4200, tags: ["a", "b"], nested: { ok: true, none: null } };
    };
    const [a, b] = await Promise.all([idempotentJson(client, key, fp, fn), idempotentJson(client, key, fp, fn)]);
    const later = await idempotentJson(client, key, fp, fn);
    assert.equal(runs, 1, "fn ran more than once");
    const want = { charge: "ch_1", amount: 4200, tags: ["a", "b"], nested: { ok: true, none: null } };
    assert.deepEqual(a, want);
    assert.deepEqual(b, want);
    assert.deepEqual(later, want);
    const raw = await client.idempotency.checkOrRecordIdempotency({ key, fingerprint: fp });
    assert.equal(raw.result?.metadata["content-type"], "application/json");
    assert.equal(new TextDecoder().decode(raw.result?.data), JSON.stringify(want));

    // undefined is stored as an empty result and comes back as undefined.
    const k2 = uniqueKey("json-undefined");
    assert.equal(await idempotentJson(client, k2, fp, () => undefined), undefined);
    assert.equal(await idempotentJson(client, k2, fp, () => "never"), undefined);
  });
});
