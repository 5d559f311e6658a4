#!/usr/bin/env python3
"""The seed scenario, from Python, against a running sidecar.

1. Charge a payment exactly once under retries: a client retries the charge
   of an order three times with the same idempotency key (its first response
   was "lost" on the way back). The payment provider's ledger ends with one
   charge, and every call returns the same receipt.

2. Reserve stock under a lock with a fencing check: four buyers reserve
   units of one SKU concurrently, each inside ``client.lock``; the warehouse
   remembers the highest fencing token it has seen and refuses a lower one.
   Then a holder that "paused" past its lease's TTL wakes up and tries to
   write: the fencing check refuses it, and its release reports LEASE_LOST.

3. Announce the order once and ship it despite a failure: the "order placed"
   event is published twice with one idempotency key (appended once); the
   shipping consumer fails on the first delivery (nacked) and ships on the
   redelivery (acked).

Run it (the sidecar's address comes from SIDECAR_ADDR, default
127.0.0.1:50051):

    make run                                   # in one terminal: a sidecar
    pip install -e clients/python              # once
    python examples/python/seed.py

It prints what happens, a final `summary: {...}` JSON line, and exits 0 only
if every check held. Keys carry a fresh run id, so it can run any number of
times against the same sidecar.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid

from google.protobuf.duration_pb2 import Duration

from resilience_sidecar import Client, LeaseLost, ResilienceError, fingerprint
from resilience_sidecar.v1 import lock_pb2


# ---- 1. payments -------------------------------------------------------------


class PaymentProvider:
    """Stands in for a payment API: every call to charge() moves money."""

    def __init__(self) -> None:
        self.ledger: list[dict] = []
        self._mu = threading.Lock()

    def charge(self, order_id: str, amount_cents: int, currency: str) -> dict:
        with self._mu:
            charge = {
                "charge_id": f"ch_{len(self.ledger) + 1:04d}_{uuid.uuid4().hex[:6]}",
                "order_id": order_id,
                "amount_cents": amount_cents,
                "currency": currency,
                "status": "succeeded",
            }
            self.ledger.append(charge)
            return charge


def charge_with_retries(client: Client, provider: PaymentProvider, order_id: str) -> dict:
    request = {"order_id": order_id, "amount_cents": 4200, "currency": "EUR"}
    # The idempotency key names the operation; the fingerprint is a hash of
    # the request, so reusing the key for a different request is refused.
    key = f"payments/charge/{order_id}"
    fp = fingerprint(json.dumps(request, sort_keys=True))

    receipts = []
    for call in (1, 2, 3):  # the client's retries: same key, same request
        before = len(provider.ledger)
        receipt = client.idempotent(key, fp, lambda: provider.charge(order_id, 4200, "EUR"))
        ran = len(provider.ledger) > before
        note = "ran the charge" if ran else "stored result, not charged again"
        if call == 1:
            note += "; its response is lost on the way back, so the client retries"
        print(f"payment: call {call} -> {receipt['charge_id']} {receipt['amount_cents']} {receipt['currency']} ({note})")
        receipts.append(receipt)

    charges = [c for c in provider.ledger if c["order_id"] == order_id]
    same = all(r == receipts[0] for r in receipts)
    ok = len(charges) == 1 and same
    print(f"payment: ledger holds {len(charges)} charge(s) for {order_id}; "
          f"all 3 calls returned the same receipt: {same}: {'OK' if ok else 'FAILED'}")
    return {"charges": len(charges), "same_receipt": same, "receipt": receipts[0], "ok": ok}


# ---- 2. stock ----------------------------------------------------------------


class StaleToken(Exception):
    pass


class Warehouse:
    """The resource the lock protects. It keeps the highest fencing token it
    has seen per SKU and refuses a write with a token not above it, which
    stops a holder whose lease expired while it was paused (Kleppmann)."""

    def __init__(self, stock: dict[str, int]) -> None:
        self.stock = dict(stock)
        self.highest_token: dict[str, int] = {}
        self._mu = threading.Lock()  # the warehouse's own atomicity, not the lock under test

    def reserve(self, sku: str, qty: int, token: int) -> int:
        with self._mu:
            highest = self.highest_token.get(sku, 0)
            if token <= highest:
                raise StaleToken(f"token {token} <= highest seen {highest}")
            self.highest_token[sku] = token
        current = self.stock[sku]  # read ...
        time.sleep(0.01)  # ... think (a lost update would show here) ...
        if current < qty:
            raise ValueError(f"only {current} left")
        self.stock[sku] = current - qty  # ... write
        return self.stock[sku]


def reserve_stock(client: Client, run_id: str) -> dict:
    sku = f"sku-{run_id}"
    lock_key = f"stock/{sku}"
    initial, buyers, qty = 10, 4, 2
    warehouse = Warehouse({sku: initial})
    failures: list[str] = []

    def buyer(name: str) -> None:
        try:
            with client.lock(lock_key, ttl=5, wait=30, owner=name) as lease:
                left = warehouse.reserve(sku, qty, lease.fencing_token)
                lease.check()  # still ours: the reservation stands
                print(f"stock: {name} reserved {qty} x {sku} with fencing token {lease.fencing_token} ({left} left)")
        except Exception as e:
            failures.append(f"{name}: {e!r}")
            print(f"stock: {name} FAILED: {e!r}")

    threads = [threading.Thread(target=buyer, args=(f"buyer-{i}",)) for i in range(1, buyers + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    left = warehouse.stock[sku]
    counted_ok = left == initial - buyers * qty and not failures
    print(f"stock: {left} left of {initial} after {buyers} concurrent reservations of {qty}: "
          f"{'OK' if counted_ok else 'FAILED'}")

    # A holder that pauses past its TTL (a GC pause, a stalled VM), with the
    # plain RPCs to show each step.
    paused = client.locks.AcquireLock(lock_pb2.AcquireLockRequest(
        key=lock_key, owner="paused-worker", ttl=Duration(nanos=300_000_000)))
    assert paused.acquired
    time.sleep(0.6)  # the lease expires meanwhile
    with client.lock(lock_key, ttl=5, wait=10, owner="buyer-5") as lease:
        left = warehouse.reserve(sku, 1, lease.fencing_token)
        print(f"stock: buyer-5 reserved 1 x {sku} with fencing token {lease.fencing_token} "
              f"while paused-worker was paused ({left} left)")
    stale_refused = False
    try:
        warehouse.reserve(sku, 1, paused.lease.fencing_token)
        print("stock: paused-worker's late write was accepted: FAILED")
    except StaleToken as e:
        stale_refused = True
        print(f"stock: paused-worker woke up; its write was refused by the fencing check ({e}): OK")
    release_reason = ""
    try:
        client.locks.ReleaseLock(lock_pb2.ReleaseLockRequest(key=lock_key, lease_id=paused.lease.lease_id))
    except LeaseLost as e:
        release_reason = e.reason
    print(f"stock: paused-worker's release -> {release_reason or 'accepted'}"
          f"{': OK' if release_reason == 'LEASE_LOST' else ': FAILED'}")
    left = warehouse.stock[sku]
    ok = counted_ok and stale_refused and release_reason == "LEASE_LOST" and left == initial - buyers * qty - 1
    return {"stock_left": left, "stale_refused": stale_refused, "release": release_reason, "ok": ok}


# ---- 3. events ---------------------------------------------------------------


def announce_and_ship(client: Client, run_id: str) -> dict:
    order_id = f"order-{run_id}"
    topic = f"orders.placed.{run_id}"
    body = json.dumps({"order_id": order_id})
    # The publish is retried (its answer was "lost"): appended once.
    first = client.publish(topic, body, key=order_id, idempotency_key=f"{order_id}/placed")
    retry = client.publish(topic, body, key=order_id, idempotency_key=f"{order_id}/placed")
    once = retry.duplicate and retry.event_id == first.event_id
    print(f"events: order placed as event {first.event_id}; retry duplicate={retry.duplicate}: "
          f"{'OK' if once else 'FAILED'}")

    shipped: list[str] = []
    with client.subscribe(topic, "shipping", "shipping-1") as sub:
        bound = threading.Timer(15, sub.cancel)  # never hang the scenario
        bound.daemon = True
        bound.start()

        def ship(event) -> None:
            if event.delivery_count == 1:
                print(f"events: ship {event.key}: courier unavailable on delivery 1, nacked")
                raise RuntimeError("courier unavailable")  # nacked: delivered again
            shipped.append(event.key)
            print(f"events: ship {event.key}: shipped on delivery {event.delivery_count}, acked")
            sub.cancel()  # a real consumer runs until shutdown

        sub.run(ship)
        bound.cancel()
    ok = once and shipped == [order_id]
    return {"announced_once": once, "shipped": len(shipped), "ok": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", help="sidecar address (default: $SIDECAR_ADDR, else 127.0.0.1:50051)")
    parser.add_argument("--ready-timeout", type=float, default=5.0, help="seconds to wait for the sidecar (default 5)")
    parser.add_argument("--run-id", default=uuid.uuid4().hex[:8], help="suffix of the keys (default: random)")
    args = parser.parse_args()

    with Client(args.addr) as client:
        try:
            client.wait_ready(timeout=args.ready_timeout)
        except ResilienceError as e:
            print(f"seed: {e}", file=sys.stderr)
            return 2
        print(f"sidecar: {client.addr} (run {args.run_id})")
        payment = charge_with_retries(client, PaymentProvider(), f"order-{args.run_id}")
        stock = reserve_stock(client, args.run_id)
        events = announce_and_ship(client, args.run_id)

    ok = payment["ok"] and stock["ok"] and events["ok"]
    print("summary: " + json.dumps({"payment": payment, "stock": stock, "events": events, "ok": ok}, sort_keys=True))
    print("seed scenario: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
