// Every ErrorInfo reason of the generated list (src/reasons.ts, from
// internal/api/status.go) has its own typed error: walked over the whole
// list as the wire carries it (grpc-status-details-bin), and provoked from
// the real sidecar on a real Redis. Plain UNAVAILABLE and DEADLINE_EXCEEDED
// are SidecarUnreachableError and DeadlineExceededError.

import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import * as net from "node:net";
import { after, before, test } from "node:test";

import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

import {
  ALL_REASONS,
  BreakerOpenError,
  ClockSkewError,
  createClient,
  DeadlineExceededError,
  durationFromMs,
  ERROR_DOMAIN,
  ErrorInfoSchema,
  executeCall,
  fromError,
  IdempotencyKeyMismatchError,
  LeaseLostError,
  LimitExceededError,
  LimiterUnknownError,
  PermitUnknownError,
  publish,
  ReplicationShortfallError,
  RetryInfoSchema,
  SagaNotFoundError,
  SagaStateConflictError,
  ShuttingDownError,
  SidecarError,
  SidecarUnreachableError,
  StoreFullError,
  StoreReadOnlyError,
  StoreUnavailableError,
  subscribe,
  TopicUnknownError,
  UpstreamTimeoutError,
  UpstreamUnavailableError,
  UpstreamUnknownError,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, configFile, freePort, Redis, redisCommand, Sidecar, startHttp } from "./harness.js";
import { scenario } from "./scenarios.js";

// The expected class of every reason, written out here (not read from the
// implementation): a reason added to the sidecar fails this test until it
// has its own class.
const expected: Record<string, new (...args: never[]) => SidecarError> = {
  LEASE_LOST: LeaseLostError,
  STORE_UNAVAILABLE: StoreUnavailableError,
  LIMIT_EXCEEDED: LimitExceededError,
  SHUTTING_DOWN: ShuttingDownError,
  IDEMPOTENCY_KEY_MISMATCH: IdempotencyKeyMismatchError,
  CLOCK_SKEW: ClockSkewError,
  SAGA_NOT_FOUND: SagaNotFoundError,
  SAGA_STATE_CONFLICT: SagaStateConflictError,
  TOPIC_UNKNOWN: TopicUnknownError,
  LIMITER_UNKNOWN: LimiterUnknownError,
  BREAKER_OPEN: BreakerOpenError,
  UPSTREAM_UNKNOWN: UpstreamUnknownError,
  PERMIT_UNKNOWN: PermitUnknownError,
  UPSTREAM_UNAVAILABLE: UpstreamUnavailableError,
  UPSTREAM_TIMEOUT: UpstreamTimeoutError,
  STORE_FULL: StoreFullError,
  STORE_READ_ONLY: StoreReadOnlyError,
  REPLICATION_SHORTFALL: ReplicationShortfallError,
};

let redis: Redis;
let upstream: Awaited<ReturnType<typeof startHttp>>;
let cfg: ReturnType<typeof configFile>;
let sidecar: Sidecar;
let client: SidecarClient;

before(async () => {
  redis = await Redis.start();
  upstream = await startHttp((req, res) => {
    if (req.url?.startsWith("/slow")) {
      const t = setTimeout(() => res.end("late"), 3_000);
      res.on("close", () => clearTimeout(t));
      return;
    }
    if (req.url?.startsWith("/big")) return void res.end("x".repeat(1_000));
    res.statusCode = 500;
    res.end("down");
  });
  const closed = await freePort(); // nothing listens there
  cfg = configFile(
    [
      "upstreams:",
      `  flaky: {url: "${upstream.url}", breaker: flaky}`,
      `  slow: {url: "${upstream.url}", timeout: 200ms, retry: {max_attempts: 1}}`,
      `  small: {url: "${upstream.url}", max_body_bytes: 64}`,
      `  down: {url: "http://127.0.0.1:${closed}", retry: {max_attempts: 1}}`,
      "breakers:",
      "  flaky: {consecutive_failures: 1, open_duration: 1m}",
      "events:",
      "  topics: [orders.placed]",
      "",
    ].join("\n"),
  );
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

/** Rejects as call does; asserts the error is exactly the reason's class, with the reason. */
async function provoke(reason: string, call: () => Promise<unknown>): Promise<SidecarError> {
  let got: unknown;
  await assert.rejects(call(), (e: unknown) => {
    got = e;
    return true;
  }, `${reason}: the call succeeded`);
  assert.ok(got instanceof SidecarError, `${reason}: got ${got}`);
  assert.equal(got.reason, reason, `${reason}: got ${got.message}`);
  assert.equal(got.constructor, expected[reason], `${reason}: got ${got.constructor.name}, want ${expected[reason]!.name}`);
  return got;
}

/** Runs fn against a sidecar of its own on a Redis of its own, set up by redisSetup. */
async function withOwnStore<T>(redisSetup: string[][], fn: (c: SidecarClient) => Promise<T>, args: string[] = []): Promise<T> {
  const r = await Redis.start();
  const sc = await Sidecar.start(r, args);
  const c = clientOf(sc, { timeoutMs: 5_000 });
  try {
    for (const cmd of redisSetup) {
      const reply = await redisCommand(r.port, ...cmd);
      assert.match(reply, /^\+OK/, `${cmd.join(" ")}: ${reply}`);
    }
    return await fn(c);
  } finally {
    c.close();
    await sc.stop();
    await r.stop();
  }
}

scenario("errors-every-reason", "every reason of the generated list has its own typed error: from the wire and from the real sidecar", async () => {
  assert.deepEqual(Object.keys(expected).sort(), [...ALL_REASONS].sort(), "the generated reason list and this test's table differ");

  // 1. The whole list as the wire carries it.
  for (const reason of ALL_REASONS) {
    // As the gRPC transport stores the details of grpc-status-details-bin.
    const wire = new ConnectError("refused", Code.FailedPrecondition);
    wire.details.push(
      { type: "google.rpc.ErrorInfo", value: toBinary(ErrorInfoSchema, create(ErrorInfoSchema, { domain: ERROR_DOMAIN, reason, metadata: { key: "k-1" } })) },
      { type: "google.rpc.RetryInfo", value: toBinary(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: durationFromMs(1_500) })) },
    );
    const e = fromError(wire);
    assert.ok(e instanceof SidecarError, `${reason}: got ${e}`);
    assert.equal(e.constructor, expected[reason], `${reason}: decoded as ${e.constructor.name}`);
    assert.equal(e.reason, reason);
    assert.deepEqual(e.metadata, { key: "k-1" }, `${reason}: ErrorInfo metadata not exposed`);
    assert.equal(e.retryDelayMs, 1_500);
  }

  // 2. Every reason provoked from the real sidecar.
  const seen = new Set<string>();
  const check = async (reason: string, call: () => Promise<unknown>) => {
    const e = await provoke(reason, call);
    seen.add(reason);
    return e;
  };
  await check("LEASE_LOST", () => client.lock.releaseLock({ key: "node-test/errors", leaseId: randomBytes(16).toString("hex") }));
  const key = `node-test/errors/${randomUUID()}`;
  await client.idempotency.checkOrRecordIdempotency({ key, fingerprint: "sha256:a" });
  await check("IDEMPOTENCY_KEY_MISMATCH", () => client.idempotency.checkOrRecordIdempotency({ key, fingerprint: "sha256:b" }));
  await check("SAGA_NOT_FOUND", () => client.saga.getSaga({ sagaId: `none-${randomUUID()}` }));
  const sagaId = `errors-${randomUUID()}`;
  await client.saga.startSaga({ sagaId, name: "one" });
  const conflict = await check("SAGA_STATE_CONFLICT", () => client.saga.startSaga({ sagaId, name: "another" }));
  assert.equal(conflict.code, Code.AlreadyExists);
  await check("UPSTREAM_UNKNOWN", () => executeCall(client, "nope", { path: "/" }));
  // The flaky upstream answers 500: one failure opens its breaker.
  assert.equal((await executeCall(client, "flaky", { method: "POST", path: "/x" })).status, 500);
  const open = await check("BREAKER_OPEN", () => executeCall(client, "flaky", { method: "POST", path: "/x" }));
  assert.equal(open.code, Code.Unavailable);
  assert.ok((open.retryDelayMs ?? 0) > 0, "BREAKER_OPEN without a retry delay");
  assert.equal(open.metadata.breaker, "flaky", `metadata ${JSON.stringify(open.metadata)}`);
  await check("UPSTREAM_UNAVAILABLE", () => executeCall(client, "down", { method: "GET", path: "/" }));
  await check("UPSTREAM_TIMEOUT", () => executeCall(client, "slow", { method: "GET", path: "/slow" }));
  await check("LIMIT_EXCEEDED", () => executeCall(client, "small", { method: "GET", path: "/big" }));
  const allowed = await client.breaker.allowCall({ breaker: `errors-${randomUUID()}` });
  await client.breaker.reportCall({ permitId: allowed.permitId, outcome: 1 });
  await check("PERMIT_UNKNOWN", () => client.breaker.reportCall({ permitId: allowed.permitId, outcome: 1 }));
  const hourAhead = BigInt(Date.now() + 3_600_000) << 16n;
  await check("CLOCK_SKEW", () => client.clock.updateHlc({ remote: { case: "encoded", value: hourAhead } }));
  await check("TOPIC_UNKNOWN", () => publish(client, "orders.other", "x"));
  await check("LIMITER_UNKNOWN", () => client.rateLimit.take({ limiter: "undeclared" }));

  // The store's states, each on a Redis of its own.
  await withOwnStore([["CONFIG", "SET", "maxmemory", "1"]], (c) => check("STORE_FULL", () => c.lock.acquireLock({ key: "k" })));
  const nobody = await freePort();
  await withOwnStore([["REPLICAOF", "127.0.0.1", String(nobody)]], (c) => check("STORE_READ_ONLY", () => c.lock.acquireLock({ key: "k" })));
  await withOwnStore([["CONFIG", "SET", "min-replicas-to-write", "1"]], (c) =>
    check("REPLICATION_SHORTFALL", () => c.lock.acquireLock({ key: "k" })),
  );
  {
    const lonely = await Redis.start();
    const sc = await Sidecar.start(lonely, ["--store-timeout", "300ms"]);
    const c = clientOf(sc, { timeoutMs: 5_000 });
    try {
      await lonely.stop();
      const e = await check("STORE_UNAVAILABLE", () => c.lock.acquireLock({ key: "k" }));
      assert.ok((e.retryDelayMs ?? 0) > 0);
    } finally {
      c.close();
      await sc.stop();
    }
  }
  {
    const sc = await Sidecar.start(redis);
    const c = clientOf(sc);
    try {
      await check("SHUTTING_DOWN", () =>
        subscribe(c, `node-test.errors.${randomBytes(4).toString("hex")}`, "g", "c", () => undefined, {
          onSubscribed: () => process.kill(sc.pid, "SIGTERM"),
        }),
      );
    } finally {
      c.close();
      await sc.stop();
    }
  }
  assert.deepEqual([...ALL_REASONS].filter((r) => !seen.has(r)), [], "reasons not provoked from the real sidecar");

  // 3. No reason: the sidecar could not be reached, or did not answer in time.
  const closed = createClient({ addr: `127.0.0.1:${await freePort()}`, token: "" });
  try {
    await assert.rejects(closed.lock.getLock({ key: "k" }), (e: unknown) => {
      assert.equal((e as Error).constructor, SidecarUnreachableError, `got ${e}`);
      assert.equal((e as SidecarError).code, Code.Unavailable);
      return true;
    });
  } finally {
    closed.close();
  }
  // A server that accepts connections and never answers.
  const sockets: net.Socket[] = [];
  const silent = net.createServer((s) => sockets.push(s));
  await new Promise<void>((res) => silent.listen(0, "127.0.0.1", res));
  const mute = createClient({ addr: `127.0.0.1:${(silent.address() as net.AddressInfo).port}`, token: "", timeoutMs: 300 });
  try {
    await assert.rejects(mute.lock.getLock({ key: "k" }), (e: unknown) => {
      assert.equal((e as Error).constructor, DeadlineExceededError, `got ${e}`);
      assert.equal((e as SidecarError).code, Code.DeadlineExceeded);
      return true;
    });
  } finally {
    mute.close();
    for (const s of sockets) s.destroy();
    silent.close();
  }
});

test("the typed errors keep the hierarchy: store states are StoreUnavailableErrors", () => {
  for (const cls of [StoreFullError, StoreReadOnlyError, ReplicationShortfallError]) {
    assert.ok(cls.prototype instanceof StoreUnavailableError, cls.name);
  }
  for (const cls of Object.values(expected)) assert.ok(cls.prototype instanceof SidecarError, cls.name);
});
