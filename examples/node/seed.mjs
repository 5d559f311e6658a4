// The seed scenario with the Node.js client of the resilience sidecar:
//
//  1. Charge a payment exactly once under retries: the "charge" request is
//     sent 3 times with the same idempotency key (two at once, as a client
//     retrying on a timeout would, then a late retry); the payment provider's
//     ledger shows one charge and every call returns the same result.
//  2. Reserve stock under a lock, with a fencing check: two workers reserve
//     concurrently under the lock `stock/<sku>`; the stock store refuses any
//     write whose fencing token is lower than the highest it has seen, so a
//     holder that paused past its lease cannot overwrite newer data.
//  3. Announce the order once and ship it despite a failure: the "order
//     placed" event is published twice with one idempotency key (appended
//     once); the shipping consumer fails on the first delivery (nacked) and
//     ships on the redelivery (acked).
//
// Run a sidecar (make run), then: cd examples/node && npm install && node seed.mjs
// SIDECAR_ADDR picks another sidecar (default 127.0.0.1:50051).

import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import { createClient, fingerprint, idempotent, publish, subscribe, withLock } from "@seed-a88e5317/resilience-sidecar";

const client = createClient();
const run = randomUUID().slice(0, 8); // fresh keys each run
let failed = false;
const check = (ok, what) => {
  console.log(`${what}: ${ok}`);
  if (!ok) failed = true;
};

// ---- 1. A payment charged once ----

// The payment provider: charging is not idempotent, every call moves money.
const ledger = [];
async function providerCharge(orderId, amountCents) {
  await sleep(200); // slow enough for the retry to arrive while it runs
  const charge = { chargeId: `ch_${ledger.length + 1}_${run}`, orderId, amountCents };
  ledger.push(charge);
  return charge;
}

// The request handler: the client's Idempotency-Key guards the charge.
async function handleCharge(idempotencyKey, request) {
  const body = JSON.stringify(request);
  const result = await idempotent(client, `payments/${idempotencyKey}`, fingerprint(body), async () => {
    const charge = await providerCharge(request.orderId, request.amountCents);
    return { data: JSON.stringify(charge), metadata: { status: "201" } };
  });
  return { status: Number(result.metadata.status), body: new TextDecoder().decode(result.data) };
}

const orderId = `order-${run}`;
const request = { orderId, amountCents: 4200 };
const key = `charge-${orderId}`;
const responses = await Promise.all([handleCharge(key, request), handleCharge(key, request)]);
responses.push(await handleCharge(key, request)); // a late retry
responses.forEach((r, i) => console.log(`charge attempt ${i + 1}: ${r.status} ${r.body}`));
console.log(`ledger: ${ledger.length} charge(s) for ${orderId}`);
check(ledger.length === 1, "charged exactly once");
check(responses.every((r) => r.status === 201 && r.body === responses[0].body), "every attempt returned the same result");

// ---- 2. Stock reserved under a lock, with a fencing check ----

// The stock store: it remembers the highest fencing token it has seen and
// refuses writes carrying a lower one.
const sku = `sku-${run}`;
const stock = { available: 5, highestToken: 0n };
function writeStock(token, available) {
  if (token < stock.highestToken) {
    throw new Error(`stale fencing token ${token} < ${stock.highestToken}: write refused`);
  }
  stock.highestToken = token;
  stock.available = available;
}

async function reserve(worker, quantity) {
  return withLock(
    client,
    `stock/${sku}`,
    async (signal, lease) => {
      const before = stock.available; // read ...
      await sleep(50); // ... think ...
      signal.throwIfAborted(); // stop if the lease was lost meanwhile
      if (before < quantity) throw new Error(`only ${before} of ${sku} left`);
      writeStock(lease.fencingToken, before - quantity); // ... write, fenced
      console.log(`reserve by ${worker}: token ${lease.fencingToken}, stock ${before} -> ${before - quantity}`);
      return lease.fencingToken;
    },
    { owner: worker, ttlMs: 5_000, waitMs: 10_000 },
  );
}

const tokens = await Promise.all([reserve("worker-a", 2), reserve("worker-b", 2)]);
check(stock.available === 1, `stock left ${stock.available}, expected 1`);

// A holder that paused past its lease comes back with its old token.
const stale = tokens[0] < tokens[1] ? tokens[0] : tokens[1];
let refused = false;
try {
  writeStock(stale, 100);
} catch (e) {
  refused = true;
  console.log(`late write by the paused holder: ${e.message}`);
}
check(refused && stock.available === 1, `stale write with token ${stale} refused`);

// ---- 3. The order announced once, shipped despite a failure ----

const topic = `orders.placed.${run}`;
const announced = [];
for (let i = 0; i < 2; i++) {
  // a retry of the publish (say its answer was lost) appends nothing
  announced.push(await publish(client, topic, JSON.stringify(request), { key: orderId, idempotencyKey: `${orderId}/placed` }));
}
console.log(`order placed: event ${announced[0].eventId}, retry duplicate: ${announced[1].duplicate}`);
check(announced[1].duplicate && announced[1].eventId === announced[0].eventId, "announced once");

const shipped = [];
const stop = new AbortController();
const bound = setTimeout(() => stop.abort(), 15_000); // never hang the scenario
await subscribe(
  client,
  topic,
  "shipping",
  "shipping-1",
  async (event) => {
    if (event.deliveryCount === 1) {
      console.log(`ship ${event.key}: courier unavailable on delivery 1, nacked`);
      throw new Error("courier unavailable"); // nacked: delivered again
    }
    shipped.push(event.key);
    console.log(`ship ${event.key}: shipped on delivery ${event.deliveryCount}, acked`);
    stop.abort(); // a real consumer runs until shutdown
  },
  { signal: stop.signal },
);
clearTimeout(bound);
check(shipped.length === 1 && shipped[0] === orderId, "shipped once after a redelivery");

client.close();
console.log(failed ? "seed scenario FAILED" : "seed scenario OK");
process.exit(failed ? 1 : 0);
