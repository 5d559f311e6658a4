// startSaga, runSaga and Saga.step against the real sidecar on a real Redis:
// the compensations are HTTP calls the sidecar makes to an upstream started
// by the test.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  CompensationStatus,
  runSaga,
  SagaState,
  SagaStateConflictError,
  startSaga,
  type Saga,
  type SagaRecord,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, configFile, Redis, Sidecar, startHttp } from "./harness.js";
import { scenario } from "./scenarios.js";

let redis: Redis;
let upstream: Awaited<ReturnType<typeof startHttp>>;
let cfg: ReturnType<typeof configFile>;
let sidecar: Sidecar;
let client: SidecarClient;
/** "<path> <Idempotency-Key>" of each compensation call, in arrival order. */
const undone: string[] = [];

before(async () => {
  redis = await Redis.start();
  upstream = await startHttp((req, res) => {
    req.resume();
    req.on("end", () => {
      undone.push(`${req.url} ${req.headers["idempotency-key"] ?? ""}`);
      res.end("ok");
    });
  });
  cfg = configFile(`upstreams:\n  inventory: {url: "${upstream.url}"}\n`);
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

const undo = (what: string) => ({ upstream: "inventory", method: "POST", path: `/undo/${what}` });

/** Polls GetSaga (real time: the sidecar compensates in the background) until the saga leaves COMPENSATING. */
async function settled(saga: Saga, ms = 20_000): Promise<SagaRecord> {
  const end = Date.now() + ms;
  for (;;) {
    const s = await saga.get();
    if (s.state !== SagaState.RUNNING && s.state !== SagaState.COMPENSATING) return s;
    if (Date.now() > end) throw new Error(`saga ${saga.id} still ${SagaState[s.state]} after ${ms} ms`);
    await sleep(50);
  }
}

describe("sagas", () => {
  scenario("saga-compensates-in-reverse", "three steps, the third fails: compensations of steps 2 and 1 run in that order, the saga ends compensated", async () => {
    const id = `order-${randomUUID()}`;
    const saga = await startSaga(client, id, "place-order", { timeoutMs: 60_000, metadata: { order: "42" } });
    const ran: string[] = [];
    assert.equal(await saga.step("reserve", undo("reserve"), () => (ran.push("reserve"), "r-1")), "r-1");
    await saga.step("charge", undo("charge"), async () => void ran.push("charge"));
    const boom = new Error("carrier refused the parcel");
    await assert.rejects(
      saga.step("ship", undo("ship"), () => {
        ran.push("ship");
        throw boom;
      }),
      (e) => e === boom,
    );
    assert.deepEqual(ran, ["reserve", "charge", "ship"]);

    const s = await settled(saga);
    assert.equal(s.state, SagaState.COMPENSATED, `saga ended ${SagaState[s.state]}: ${s.lastError}`);
    assert.match(s.reason, /carrier refused/);
    assert.equal(s.metadata.order, "42");
    assert.deepEqual(
      s.steps.map((st) => [st.step, st.index, st.status]),
      [
        ["reserve", 1, CompensationStatus.SUCCEEDED],
        ["charge", 2, CompensationStatus.SUCCEEDED],
        ["ship", 3, CompensationStatus.SUCCEEDED],
      ],
    );
    // Newest first: the failed step (recorded write-ahead: it may have done
    // part of its work), then step 2, then step 1.
    const mine = undone.filter((u) => u.endsWith(`${id}:reserve`) || u.endsWith(`${id}:charge`) || u.endsWith(`${id}:ship`));
    assert.deepEqual(mine, [`/undo/ship ${id}:ship`, `/undo/charge ${id}:charge`, `/undo/reserve ${id}:reserve`]);

    // Over: no more steps, and it cannot complete.
    let late = false;
    await assert.rejects(saga.step("late", undo("late"), () => void (late = true)), SagaStateConflictError);
    assert.equal(late, false, "a step ran on an aborted saga");
    await assert.rejects(saga.complete(), SagaStateConflictError);
  });

  test("runSaga: completes when fn resolves (nothing compensated); addCompensation records without running", async () => {
    const id = `ok-${randomUUID()}`;
    const out = await runSaga(client, id, "place-order", async (saga) => {
      assert.equal(await saga.addCompensation("reserve", undo("reserve")), 1);
      await saga.step("charge", undo("charge"), () => undefined);
      return "placed";
    });
    assert.equal(out, "placed");
    const s = await (await startSaga(client, id, "place-order")).get(); // resumes: idempotent on id and name
    assert.equal(s.state, SagaState.COMPLETED);
    assert.deepEqual(
      s.steps.map((st) => st.status),
      [CompensationStatus.PENDING, CompensationStatus.PENDING],
    );
    assert.equal(undone.filter((u) => u.includes(id)).length, 0, "a completed saga was compensated");
  });

  test("runSaga: fn throwing outside a step aborts the saga; the recorded steps are compensated", async () => {
    const id = `fail-${randomUUID()}`;
    let saga: Saga | undefined;
    await assert.rejects(
      runSaga(client, id, "place-order", async (s) => {
        saga = s;
        await s.step("reserve", undo("reserve"), () => undefined);
        throw new Error("validation failed after the step");
      }),
      /validation failed/,
    );
    const s = await settled(saga!);
    assert.equal(s.state, SagaState.COMPENSATED);
    assert.deepEqual(
      undone.filter((u) => u.includes(id)),
      [`/undo/reserve ${id}:reserve`],
    );
  });

  test("a saga id taken by a saga of another name: SagaStateConflictError", async () => {
    const id = `taken-${randomUUID()}`;
    await startSaga(client, id, "one");
    await assert.rejects(startSaga(client, id, "two"), SagaStateConflictError);
  });
});
