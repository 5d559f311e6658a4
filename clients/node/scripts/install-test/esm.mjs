// The package as an ES module (import), installed from the tarball: a lock,
// idempotent, and the Idempotency-Key middleware on node:http, against the
// sidecar at SIDECAR_ADDR. Prints "esm OK" or throws.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as http from "node:http";

import { createClient, fingerprint, idempotent, withLock } from "@seed-a88e5317/resilience-sidecar";
import { withIdempotency } from "@seed-a88e5317/resilience-sidecar/middleware";

const client = createClient();
const run = randomUUID();

const token = await withLock(client, `install-test/esm/${run}`, async (_signal, lease) => lease.fencingToken, { ttlMs: 5_000 });
assert.equal(typeof token, "bigint");
assert.ok(token > 0n);

let runs = 0;
const op = async () => ({ data: `charged ${++runs}` });
const a = await idempotent(client, `install-test/esm/${run}`, fingerprint("req"), op);
const b = await idempotent(client, `install-test/esm/${run}`, fingerprint("req"), op);
assert.equal(runs, 1);
assert.equal(new TextDecoder().decode(b.data), new TextDecoder().decode(a.data));

let handled = 0;
const listener = withIdempotency(client, (_req, res) => {
  handled++;
  res.statusCode = 201;
  res.end(`order ${handled}`);
});
const server = http.createServer((req, res) => void listener(req, res));
await new Promise((res) => server.listen(0, "127.0.0.1", res));
const url = `http://127.0.0.1:${server.address().port}/orders`;
const post = () => fetch(url, { method: "POST", headers: { "Idempotency-Key": `esm-${run}` }, body: "{}" });
const first = await post();
const dup = await post();
assert.equal(first.status, 201);
assert.equal(dup.status, 201);
assert.equal(dup.headers.get("idempotent-replayed"), "true");
assert.equal(await dup.text(), await first.text());
assert.equal(handled, 1);
server.close();
client.close();
console.log("esm OK");
