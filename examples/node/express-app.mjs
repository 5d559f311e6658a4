// An Express app whose POST /payments honours the Idempotency-Key header,
// through the resilience sidecar: a client that retries a payment (after a
// timeout, a dropped connection, a double click) is charged once and gets
// the first response again, marked `Idempotent-Replayed: true`; a retry
// sent while the first is still running gets 409 with Retry-After; a key
// reused for another payment gets 422. The keys live in the sidecar's
// store, so every instance of the app behind a load balancer shares them.
//
// Run a sidecar (make run), then: cd examples/node && npm install && node express-app.mjs
//
//   curl -i -X POST localhost:3000/payments -H 'Idempotency-Key: pay-1' \
//        -H 'Content-Type: application/json' -d '{"orderId": "o-1", "amountCents": 4200}'
//   (again: the same response, Idempotent-Replayed: true; GET /payments lists one charge)
//
// Environment: PORT (default 3000; 0 picks a free port), SIDECAR_ADDR
// (default 127.0.0.1:50051), PROVIDER_DELAY_MS (how long the simulated
// payment provider takes, default 200).

import { setTimeout as sleep } from "node:timers/promises";

import express from "express";

import { createClient } from "@seed-a88e5317/resilience-sidecar";
import { idempotencyMiddleware } from "@seed-a88e5317/resilience-sidecar/middleware";

const client = createClient(); // SIDECAR_ADDR, token, 10 s default deadline
const providerDelayMs = Number(process.env.PROVIDER_DELAY_MS ?? 200);

// The payment provider: not idempotent, every call moves money.
const charges = [];
async function providerCharge(orderId, amountCents) {
  await sleep(providerDelayMs);
  const charge = { chargeId: `ch_${charges.length + 1}`, orderId, amountCents };
  charges.push(charge);
  return charge;
}

const app = express();
// Before the body parser (it reads the body for the fingerprint and hands
// it on unchanged). required: a POST without the header is refused with 400.
app.use(idempotencyMiddleware(client, { required: true, leaseTtlMs: 30_000, retentionMs: 24 * 3600_000 }));
app.use(express.json());

app.post("/payments", async (req, res) => {
  const { orderId, amountCents } = req.body ?? {};
  if (typeof orderId !== "string" || !Number.isInteger(amountCents) || amountCents <= 0) {
    // A 4xx is stored too: the same request gets the same answer.
    res.status(400).json({ error: "orderId (string) and amountCents (positive integer) are required" });
    return;
  }
  console.log(`charging ${orderId}: ${amountCents} cents`);
  const charge = await providerCharge(orderId, amountCents);
  res.status(201).location(`/payments/${charge.chargeId}`).json(charge);
});

app.get("/payments", (_req, res) => {
  res.json({ charges });
});

const server = app.listen(Number(process.env.PORT ?? 3000), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    server.close(() => {
      client.close();
      console.log("stopped");
    });
    server.closeIdleConnections();
  });
}
