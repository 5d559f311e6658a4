// createClient and typed errors against the real sidecar: reasons decoded
// from grpc-status-details-bin, the environment, the token, and a stopped
// or frozen sidecar giving an error within the deadline instead of a hang.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  Code,
  createClient,
  DeadlineExceededError,
  DEFAULT_TIMEOUT_MS,
  InvalidArgumentError,
  LeaseLostError,
  Reason,
  SidecarError,
  SidecarUnreachableError,
  StoreUnavailableError,
  withLock,
  type SidecarClient,
} from "@seed-a88e5317/resilience-sidecar";

import { clientOf, Redis, Sidecar, tempDir } from "./harness.js";

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

/** Runs fn with the environment variables set (undefined: unset), then restores them. */
function withEnv<T>(vars: Record<string, string | undefined>, fn: () => T): T {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(vars)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe("typed errors", () => {
  test("LEASE_LOST: releasing a well-formed unknown lease", async () => {
    const leaseId = randomBytes(16).toString("hex"); // 32 hex digits
    await assert.rejects(client.lock.releaseLock({ key: "node-test/never-held", leaseId }), (e: unknown) => {
      assert.ok(e instanceof LeaseLostError, `got ${e}`);
      assert.ok(e instanceof SidecarError);
      assert.equal(e.code, Code.FailedPrecondition);
      assert.equal(e.codeName, "FAILED_PRECONDITION");
      assert.equal(e.reason, Reason.LEASE_LOST);
      assert.match(e.message, /FAILED_PRECONDITION LEASE_LOST: lease lost/);
      assert.equal(e.retryDelayMs, undefined);
      return true;
    });
  });

  test("INVALID_ARGUMENT: every refused field named in violations", async () => {
    await assert.rejects(client.lock.acquireLock({ key: "", ttl: { seconds: 0n, nanos: 1_000_000 } }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError, `got ${e}`);
      assert.equal(e.code, Code.InvalidArgument);
      assert.equal(e.reason, "");
      const fields = e.violations.map((v) => v.field);
      assert.ok(fields.includes("key"), `violations: ${JSON.stringify(e.violations)}`);
      assert.ok(fields.includes("ttl"), `violations: ${JSON.stringify(e.violations)}`);
      assert.ok(e.violation("key"));
      return true;
    });
  });
});

describe("a sidecar whose Redis is gone", () => {
  test("STORE_UNAVAILABLE: StoreUnavailableError with the RetryInfo delay", async () => {
    const lonely = await Redis.start();
    const sc = await Sidecar.start(lonely, ["--store-timeout", "300ms"]);
    const c = clientOf(sc, { timeoutMs: 5_000 });
    try {
      await lonely.stop();
      await assert.rejects(c.lock.acquireLock({ key: "node-test/no-store" }), (e: unknown) => {
        assert.ok(e instanceof StoreUnavailableError, `got ${e}`);
        assert.equal(e.code, Code.Unavailable);
        assert.equal(e.reason, Reason.STORE_UNAVAILABLE);
        assert.equal(e.retryDelayMs, 1_000);
        return true;
      });
    } finally {
      c.close();
      await sc.stop();
      await lonely.stop();
    }
  });
});

describe("createClient", () => {
  test("defaults: SIDECAR_ADDR, then 127.0.0.1:50051; a 10 s default deadline", () => {
    assert.equal(DEFAULT_TIMEOUT_MS, 10_000);
    withEnv({ SIDECAR_ADDR: undefined, SIDECAR_API_TOKEN: undefined, SIDECAR_API_TOKEN_FILE: undefined }, () => {
      const c = createClient();
      assert.equal(c.addr, "127.0.0.1:50051");
      assert.equal(c.timeoutMs, 10_000);
      c.close();
    });
    withEnv({ SIDECAR_ADDR: sidecar.addr }, () => {
      const c = createClient();
      assert.equal(c.addr, sidecar.addr);
      c.close();
    });
    assert.throws(() => createClient({ addr: "https://example:1" }), /bad sidecar address/);
  });

  test("SIDECAR_ADDR is used for calls", async () => {
    const c = withEnv({ SIDECAR_ADDR: sidecar.addr }, () => createClient({ token: "" }));
    try {
      const r = await c.lock.getLock({ key: "node-test/env" });
      assert.equal(r.held, false);
    } finally {
      c.close();
    }
  });
});

describe("a sidecar on a unix socket", () => {
  test("SIDECAR_ADDR=unix:///path", async () => {
    const dir = tempDir("sidecar-unix-");
    const sc = await Sidecar.start(redis, [], { unixSocket: join(dir.path, "sidecar.sock") });
    try {
      const c = withEnv({ SIDECAR_ADDR: sc.addr }, () => createClient({ token: "" }));
      try {
        assert.match(c.addr, /^unix:\/\/\//);
        assert.equal(await withLock(c, "node-test/unix", (_s, lease) => lease.fencingToken > 0n), true);
      } finally {
        c.close();
      }
    } finally {
      await sc.stop();
      dir.remove();
    }
  });
});

describe("a sidecar with an API token", () => {
  let secured: Sidecar;
  let dir: ReturnType<typeof tempDir>;
  const token = randomBytes(12).toString("hex");

  before(async () => {
    dir = tempDir("sidecar-token-");
    writeFileSync(join(dir.path, "token"), token + "\n");
    secured = await Sidecar.start(redis, ["--api-token-file", join(dir.path, "token")]);
  });
  after(async () => {
    await secured?.stop();
    dir?.remove();
  });

  test("no token: UNAUTHENTICATED", async () => {
    const c = clientOf(secured);
    try {
      await assert.rejects(c.lock.getLock({ key: "k" }), (e: unknown) => {
        assert.ok(e instanceof SidecarError, `got ${e}`);
        assert.equal(e.code, Code.Unauthenticated);
        return true;
      });
    } finally {
      c.close();
    }
  });

  test("SIDECAR_API_TOKEN_FILE and SIDECAR_API_TOKEN are sent as a bearer token", async () => {
    for (const env of [
      { SIDECAR_API_TOKEN: undefined, SIDECAR_API_TOKEN_FILE: join(dir.path, "token") },
      { SIDECAR_API_TOKEN: token, SIDECAR_API_TOKEN_FILE: undefined },
    ]) {
      const c = withEnv({ ...env, SIDECAR_ADDR: secured.addr }, () => createClient());
      try {
        assert.equal((await c.lock.getLock({ key: "k" })).held, false);
      } finally {
        c.close();
      }
    }
    assert.throws(
      () => withEnv({ SIDECAR_API_TOKEN: undefined, SIDECAR_API_TOKEN_FILE: join(dir.path, "missing") }, () => createClient()),
      /SIDECAR_API_TOKEN_FILE/,
    );
  });
});

describe("a stopped sidecar is an error, not a hang", () => {
  let doomed: Sidecar;
  before(async () => {
    doomed = await Sidecar.start(redis);
  });
  after(async () => {
    doomed?.thaw();
    await doomed?.stop();
  });

  test("frozen (SIGSTOP): unary calls and withLock fail with DEADLINE_EXCEEDED within the deadline", async () => {
    const withDefault = clientOf(doomed); // DEFAULT_TIMEOUT_MS
    const short = clientOf(doomed, { timeoutMs: 1_000 });
    try {
      await short.lock.getLock({ key: "k" }); // connection up before the freeze
      await withDefault.lock.getLock({ key: "k" });
      // A session holding a lock when the sidecar freezes: no renewal comes,
      // so fn's signal aborts once the TTL has passed without one.
      let entered!: () => void;
      const inFn = new Promise<void>((r) => (entered = r));
      let frozeAt = 0;
      const held = withLock(
        short,
        "node-test/frozen-held",
        async (signal) => {
          entered();
          await new Promise((res, rej) => {
            signal.addEventListener("abort", res);
            setTimeout(() => rej(new Error("fn's signal not aborted 10 s into the freeze")), 10_000);
          });
          return Date.now() - frozeAt;
        },
        { ttlMs: 1_000 },
      ).then(
        () => assert.fail("withLock resolved although no renewal came"),
        (e: unknown) => e,
      );
      await inFn;
      frozeAt = Date.now();
      await doomed.frozen();

      const timed = async (p: Promise<unknown>) => {
        const start = Date.now();
        const err = await p.then(
          () => assert.fail("call to a frozen sidecar succeeded"),
          (e: unknown) => e,
        );
        return { err, ms: Date.now() - start };
      };
      const [unaryDefault, unaryShort, lock] = await Promise.all([
        timed(withDefault.lock.acquireLock({ key: "node-test/frozen" })),
        timed(short.idempotency.checkOrRecordIdempotency({ key: "node-test/frozen" })),
        timed(withLock(short, "node-test/frozen", () => "never")),
      ]);
      for (const [what, r, bound] of [
        ["unary, default deadline", unaryDefault, DEFAULT_TIMEOUT_MS],
        ["unary, 1 s deadline", unaryShort, 1_000],
        ["withLock, 1 s deadline", lock, 1_000],
      ] as const) {
        assert.ok(r.err instanceof DeadlineExceededError, `${what}: got ${r.err}`);
        assert.equal(r.err.code, Code.DeadlineExceeded, `${what}: ${r.err.message}`);
        assert.ok(r.err.message.includes(doomed.addr), `${what}: message does not name the sidecar: ${r.err.message}`);
        assert.ok(r.ms >= bound - 100 && r.ms < bound + 3_000, `${what}: took ${r.ms} ms for a ${bound} ms deadline`);
      }
      const lost = await held;
      assert.ok(lost instanceof LeaseLostError, `withLock on a frozen sidecar: got ${lost}`);
      assert.equal(lost.lostReason, "RENEWAL_OVERDUE");
    } finally {
      doomed.thaw();
      short.close();
      withDefault.close();
    }
  });

  test("killed: UNAVAILABLE naming the address, at once", async () => {
    const c = clientOf(doomed, { timeoutMs: 5_000 });
    try {
      await c.lock.getLock({ key: "k" });
      await doomed.stop();
      const start = Date.now();
      await assert.rejects(c.lock.getLock({ key: "k" }), (e: unknown) => {
        assert.ok(e instanceof SidecarUnreachableError, `got ${e}`);
        assert.equal(e.code, Code.Unavailable, e.message);
        assert.ok(e.message.includes(doomed.addr), e.message);
        return true;
      });
      assert.ok(Date.now() - start < 5_000);
      await assert.rejects(withLock(c, "node-test/killed", () => "never"), (e: unknown) => {
        assert.ok(e instanceof SidecarUnreachableError, `got ${e}`);
        assert.equal(e.code, Code.Unavailable, e.message);
        return true;
      });
    } finally {
      c.close();
    }
  });
});

describe("every service is on the client", () => {
  test("saga: StartSaga then GetSaga", async () => {
    const sagaId = `node-${randomBytes(6).toString("hex")}`;
    const started = await client.saga.startSaga({ sagaId, name: "checkout" });
    assert.equal(started.saga?.sagaId, sagaId);
    const got = await client.saga.getSaga({ sagaId });
    assert.equal(got.saga?.name, "checkout");
    assert.equal(got.saga?.state, 1); // SAGA_STATE_RUNNING
  });
});
