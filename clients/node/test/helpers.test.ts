// LamportClock against the real sidecar, and the package root exporting
// every public type: the generated messages and enums users handle (this
// test reads the generated modules' export lists from src/gen).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomUUID } from "node:crypto";

import * as pkg from "@seed-a88e5317/resilience-sidecar";
import { InvalidArgumentError, LamportClock, type SidecarClient } from "@seed-a88e5317/resilience-sidecar";

import * as breakerPb from "../src/gen/resilience/v1/breaker_pb.js";
import * as clockPb from "../src/gen/resilience/v1/clock_pb.js";
import * as eventsPb from "../src/gen/resilience/v1/events_pb.js";
import * as idempotencyPb from "../src/gen/resilience/v1/idempotency_pb.js";
import * as lockPb from "../src/gen/resilience/v1/lock_pb.js";
import * as ratelimitPb from "../src/gen/resilience/v1/ratelimit_pb.js";
import * as sagaPb from "../src/gen/resilience/v1/saga_pb.js";
import * as semaphorePb from "../src/gen/resilience/v1/semaphore_pb.js";

import { clientOf, Redis, Sidecar } from "./harness.js";

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

describe("LamportClock", () => {
  test("stamp, reserve, observe and current order events", async () => {
    const clock = new LamportClock(client, `node-test/${randomUUID()}`);
    assert.equal(await clock.current(), 0n);
    const a = await clock.stamp();
    const b = await clock.stamp();
    assert.ok(a >= 1n && b > a, `${a} then ${b}`);
    const { first, last } = await clock.reserve(10);
    assert.equal(first, b + 1n);
    assert.equal(last, first + 9n);
    assert.equal(await clock.current(), last);
    // A stamp from elsewhere, ahead of this clock: the receive event is after it.
    const received = await clock.observe(last + 1_000n);
    assert.equal(received, last + 1_001n);
    assert.ok((await clock.stamp()) > received);
    // Behind this clock: the clock just moves on.
    assert.equal(await clock.observe(1), received + 2n);
    await assert.rejects(new LamportClock(client, "").stamp(), InvalidArgumentError);
  });
});

describe("the package root", () => {
  test("exports every generated message schema, enum and service (Saga as SagaRecord)", () => {
    const renamed: Record<string, string> = { SagaSchema: "SagaRecordSchema" };
    const exported = pkg as Record<string, unknown>;
    for (const mod of [breakerPb, clockPb, eventsPb, idempotencyPb, lockPb, ratelimitPb, sagaPb, semaphorePb]) {
      for (const [name, value] of Object.entries(mod)) {
        const as = renamed[name] ?? name;
        assert.ok(as in exported, `${name} is not exported from the package root${as !== name ? ` as ${as}` : ""}`);
        // The same descriptor or enum (this test compiles its own copy of src/gen).
        type Desc = { kind?: string; typeName?: string; name?: string };
        const got = exported[as] as Desc | undefined;
        const want = value as Desc;
        if (want.kind !== undefined) assert.deepEqual([got?.kind, got?.typeName ?? got?.name], [want.kind, want.typeName ?? want.name], name);
        else assert.deepEqual(got, value, name); // an enum
      }
    }
    // The enums users switch on.
    assert.equal(pkg.SagaState.COMPENSATED, 4);
    assert.equal(pkg.CompensationStatus.SUCCEEDED, 2);
    assert.equal(pkg.BreakerState.OPEN, 2);
    assert.equal(pkg.CallOutcome.FAILURE, 2);
    assert.equal(pkg.LostReason.RENEWAL_OVERDUE, "RENEWAL_OVERDUE");
  });
});
