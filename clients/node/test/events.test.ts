// publish, subscribe, ack, nack and outboxStatus against the real sidecar
// on a real redis-server.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  ack,
  Code,
  InvalidArgumentError,
  nack,
  outboxStatus,
  publish,
  RetryAfterError,
  ShuttingDownError,
  SidecarError,
  subscribe,
  TopicUnknownError,
  Reason,
  type Event,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, Redis, Sidecar, tempDir } from "./harness.js";
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

const uniqueTopic = () => `node-test.${randomBytes(6).toString("hex")}`;
const text = (ev: Event) => new TextDecoder().decode(ev.payload);

/** Subscribes until `stop` is called from the handler (or `ms` pass); resolves with what subscribe settled with. */
async function run(
  topic: string,
  group: string,
  consumer: string,
  handler: (ev: Event, stop: () => void, signal: AbortSignal) => Promise<void> | void,
  opts: Parameters<typeof subscribe>[5] = {},
  ms = 15_000,
): Promise<void> {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(new Error("test timeout")), ms);
  try {
    await subscribe(client, topic, group, consumer, (ev, signal) => handler(ev, () => ctl.abort(), signal), { ...opts, signal: ctl.signal });
  } finally {
    clearTimeout(timer);
  }
}

describe("publish", () => {
  test("the same idempotency key twice appends once: same event id, duplicate", async () => {
    const topic = uniqueTopic();
    const a = await publish(client, topic, "one", { idempotencyKey: "k1", key: "order-1" });
    const b = await publish(client, topic, "one", { idempotencyKey: "k1", key: "order-1" });
    assert.equal(a.duplicate, false);
    assert.equal(b.duplicate, true);
    assert.equal(b.eventId, a.eventId);
    assert.match(a.eventId, /^\d+-\d+$/);
    const c = await publish(client, topic, new Uint8Array([0x74, 0x77, 0x6f]));
    assert.equal(c.duplicate, false);
    assert.notEqual(c.eventId, a.eventId);

    // Two events in the topic, not three.
    const got: string[] = [];
    await run(topic, "g", "c1", (ev, stop) => {
      got.push(`${ev.eventId} ${ev.key} ${text(ev)}`);
      if (got.length === 2) setTimeout(stop, 500); // time for a third, which must not come
    });
    assert.deepEqual(got, [`${a.eventId} order-1 one`, `${c.eventId}  two`]);
  });

  test("an invalid topic name is INVALID_ARGUMENT naming the field", async () => {
    await assert.rejects(publish(client, "bad topic/with spaces", "x"), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError, `got ${e}`);
      assert.equal(e.code, Code.InvalidArgument);
      assert.ok(e.violation("topic"), `violations ${JSON.stringify(e.violations)}`);
      return true;
    });
    await assert.rejects(
      subscribe(client, ".starts-with-dot", "g", "c", () => assert.fail("handler called")),
      (e: unknown) => {
        assert.ok(e instanceof InvalidArgumentError, `got ${e}`);
        assert.ok(e.violation("topic"), `violations ${JSON.stringify(e.violations)}`);
        return true;
      },
    );
  });
});

describe("subscribe", () => {
  scenario("events-redelivery", "in order, delivery 1; a throwing handler's event (nacked) comes again as delivery 2; acked events never again", async () => {
    const topic = uniqueTopic();
    for (const p of ["e1", "e2", "e3"]) await publish(client, topic, p, { headers: { "content-type": "text/plain" } });
    const got: string[] = [];
    let subscribed: boolean | undefined;
    await run(
      topic,
      "workers",
      "w1",
      (ev, stop) => {
        got.push(`${text(ev)}#${ev.deliveryCount}`);
        assert.equal(ev.topic, topic);
        assert.equal(ev.headers["content-type"], "text/plain");
        assert.ok(ev.publishedAt);
        if (got.length === 4) setTimeout(stop, 1500); // past the visibility timeout: nothing more may come
        if (text(ev) === "e2" && ev.deliveryCount === 1) throw new Error("first attempt fails");
      },
      { visibilityTimeoutMs: 300, maxInFlight: 4, onSubscribed: (i) => (subscribed = i.groupCreated) },
    );
    assert.equal(subscribed, true);
    assert.deepEqual(got, ["e1#1", "e2#1", "e3#1", "e2#2"]);
  });

  test("RetryAfterError delays the redelivery", async () => {
    const topic = uniqueTopic();
    await publish(client, topic, "x");
    const at: number[] = [];
    await run(topic, "g", "c", (ev, stop) => {
      at.push(Date.now());
      if (ev.deliveryCount === 1) throw new RetryAfterError(700);
      stop();
    });
    assert.equal(at.length, 2);
    assert.ok(at[1]! - at[0]! >= 600, `redelivered after ${at[1]! - at[0]!} ms, want about 700`);
  });

  test("aborting ends it cleanly; the event being handled is nacked and comes again at once", async () => {
    const topic = uniqueTopic();
    await publish(client, topic, "slow");
    const ctl = new AbortController();
    let started!: () => void;
    const handling = new Promise<void>((r) => (started = r));
    const sub = subscribe(
      client,
      topic,
      "g",
      "c1",
      async (_ev, signal) => {
        started();
        await new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason), { once: true }));
      },
      { signal: ctl.signal, visibilityTimeoutMs: 60_000 },
    );
    await handling;
    ctl.abort();
    await sub; // resolves: a clean end

    // Nacked: redelivered at once, not after the one-minute visibility timeout.
    let count = 0;
    await run(topic, "g", "c2", (ev, stop) => {
      count = ev.deliveryCount;
      stop();
    }, {}, 10_000);
    assert.equal(count, 2);

    // An idle subscription ends as cleanly.
    const idle = new AbortController();
    const p = subscribe(client, topic, "g", "c3", () => undefined, { signal: idle.signal, onSubscribed: () => idle.abort() });
    await p;
  });

  test("startFrom latest skips what was published before the group existed", async () => {
    const topic = uniqueTopic();
    await publish(client, topic, "old");
    const got: string[] = [];
    await run(
      topic,
      "late",
      "c",
      (ev, stop) => {
        got.push(text(ev));
        stop();
      },
      { startFrom: "latest", onSubscribed: () => void publish(client, topic, "new") },
    );
    assert.deepEqual(got, ["new"]);
  });
});

describe("ack, nack, outboxStatus", () => {
  test("ack and nack of an event no longer pending report false; no outbox configured", async () => {
    const topic = uniqueTopic();
    const { eventId } = await publish(client, topic, "x");
    await run(topic, "g", "c", (_ev, stop) => stop());
    assert.equal(await ack(client, topic, "g", eventId), false);
    assert.equal(await nack(client, topic, "g", eventId, { retryAfterMs: 100 }), false);
    const st = await outboxStatus(client);
    assert.equal(st.enabled, false);
  });

  test("raw stream: the handler-less way, acked by hand", async () => {
    const topic = uniqueTopic();
    const { eventId } = await publish(client, topic, "raw");
    const ctl = new AbortController();
    let seen = "";
    try {
      for await (const m of client.events.subscribe({ topic, group: "g", consumer: "c" }, { signal: ctl.signal })) {
        if (m.kind.case !== "event") continue;
        seen = m.kind.value.eventId;
        assert.equal(await ack(client, topic, "g", seen), true);
        ctl.abort();
      }
    } catch (e) {
      if (!ctl.signal.aborted) throw e;
    }
    assert.equal(seen, eventId);
  });
});

test("a sidecar whose config declares its topics refuses others: NOT_FOUND/TOPIC_UNKNOWN", async () => {
  const dir = tempDir("node-events-");
  const cfg = join(dir.path, "sidecar.yaml");
  writeFileSync(cfg, "events:\n  topics: [orders.placed]\n");
  const sc = await Sidecar.start(redis, ["--config", cfg]);
  const c = clientOf(sc);
  try {
    assert.equal((await publish(c, "orders.placed", "x")).duplicate, false);
    await assert.rejects(publish(c, "orders.other", "x"), (e: unknown) => {
      assert.ok(e instanceof TopicUnknownError, `got ${e}`);
      assert.equal(e.code, Code.NotFound);
      assert.equal(e.reason, Reason.TOPIC_UNKNOWN);
      return true;
    });
    await assert.rejects(subscribe(c, "orders.other", "g", "c", () => undefined), TopicUnknownError);
  } finally {
    c.close();
    await sc.stop();
    dir.remove();
  }
});

test("a sidecar stopping (SIGTERM) ends subscribe with ShuttingDownError; a killed one with UNAVAILABLE", async () => {
  for (const [signal, check] of [
    ["SIGTERM", (e: unknown) => e instanceof ShuttingDownError],
    ["SIGKILL", (e: unknown) => e instanceof SidecarError && e.code === Code.Unavailable],
  ] as const) {
    const sc = await Sidecar.start(redis);
    const c = clientOf(sc);
    try {
      const sub = subscribe(c, uniqueTopic(), "g", "c", () => undefined, { onSubscribed: () => process.kill(sc.pid, signal) });
      await assert.rejects(sub, (e: unknown) => {
        assert.ok(check(e), `${signal}: got ${e}`);
        return true;
      });
    } finally {
      c.close();
      await sc.stop();
    }
  }
});
