"""publish, subscribe, ack, nack and outbox_status against the real sidecar."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Callable, List

import grpc
import pytest

from harness import Sidecar
from resilience_sidecar import Client, InvalidArgument, RetryAfter, ShuttingDown, Subscription, TopicUnknown, Unavailable
from resilience_sidecar.v1 import events_pb2


@pytest.fixture
def topic() -> str:
    return f"py-test.{uuid.uuid4().hex[:12]}"


def stop_later(sub: Subscription, delay: float) -> None:
    t = threading.Timer(delay, sub.cancel)
    t.daemon = True
    t.start()


def test_publish_idempotency_key_appends_once(client: Client, topic: str) -> None:
    a = client.publish(topic, "one", key="order-1", idempotency_key="k1")
    b = client.publish(topic, b"one", key="order-1", idempotency_key="k1")
    assert not a.duplicate and b.duplicate
    assert b.event_id == a.event_id
    c = client.publish(topic, b"two")
    assert not c.duplicate and c.event_id != a.event_id

    got: List[str] = []
    with client.subscribe(topic, "g", "c1") as sub:
        stop_later(sub, 10)  # a bound, should the test fail

        def handle(ev: events_pb2.Event) -> None:
            got.append(f"{ev.event_id} {ev.key} {ev.payload.decode()}")
            if len(got) == 2:
                stop_later(sub, 0.5)  # time for a third, which must not come

        sub.run(handle)
    assert got == [f"{a.event_id} order-1 one", f"{c.event_id}  two"]


@pytest.mark.scenario("events-redelivery")
def test_subscribe_order_nack_redelivery_and_ack(client: Client, topic: str) -> None:
    for p in ("e1", "e2", "e3"):
        client.publish(topic, p, headers={"content-type": "text/plain"})
    got: List[str] = []
    sub = client.subscribe(topic, "workers", "w1", visibility_timeout=0.3, max_in_flight=4)
    assert sub.group_created
    stop_later(sub, 15)

    def handle(ev: events_pb2.Event) -> None:
        got.append(f"{ev.payload.decode()}#{ev.delivery_count}")
        assert ev.topic == topic and ev.headers["content-type"] == "text/plain"
        assert ev.published_at.seconds > 0
        if len(got) == 4:
            stop_later(sub, 1.5)  # past the visibility timeout: nothing more may come
        if ev.payload == b"e2" and ev.delivery_count == 1:
            raise RuntimeError("first attempt fails")

    sub.run(handle)
    assert got == ["e1#1", "e2#1", "e3#1", "e2#2"]


def test_retry_after_delays_the_redelivery(client: Client, topic: str) -> None:
    client.publish(topic, "x")
    at: List[float] = []
    with client.subscribe(topic, "g", "c") as sub:
        stop_later(sub, 10)

        def handle(ev: events_pb2.Event) -> None:
            at.append(time.monotonic())
            if ev.delivery_count == 1:
                raise RetryAfter(0.7)
            sub.cancel()

        sub.run(handle)
    assert len(at) == 2
    assert at[1] - at[0] >= 0.6


def test_invalid_topic_is_invalid_argument_naming_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.publish("bad topic/with spaces", b"x")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.violations.get("topic"), info.value.violations
    with pytest.raises(InvalidArgument) as info:
        client.subscribe(".starts-with-dot", "g", "c")
    assert info.value.violations.get("topic"), info.value.violations


def test_cancel_ends_iteration_cleanly_and_unsettled_events_come_back(client: Client, topic: str) -> None:
    client.publish(topic, "slow")
    sub = client.subscribe(topic, "g", "c1", visibility_timeout=0.5)
    it = iter(sub)
    first = next(it)
    assert first.delivery_count == 1
    sub.cancel()  # not settled: redelivered after the visibility timeout
    assert list(it) == []  # the iteration ends, without an error
    assert sub.cancelled

    # Cancelled from another thread while waiting for events: ends too. The
    # abandoned event comes back after c1's 0.5 s visibility timeout (it
    # belongs to the delivery), not after c2's default of 30 s.
    with client.subscribe(topic, "g", "c2") as sub2:
        ev = next(iter(sub2))  # the unsettled event, again
        assert ev.event_id == first.event_id and ev.delivery_count == 2
        assert sub2.ack(ev)
        threading.Timer(0.3, sub2.cancel).start()
        started = time.monotonic()
        assert list(sub2) == []
        assert time.monotonic() - started < 5


def test_handler_cancelling_its_subscription_still_acks(client: Client, topic: str) -> None:
    r = client.publish(topic, "once")
    with client.subscribe(topic, "g", "c") as sub:
        sub.run(lambda ev: sub.cancel())
    assert client.ack(topic, "g", r.event_id) is False  # already acked by run
    assert client.nack(topic, "g", r.event_id, retry_after=0.1) is False


def test_start_from_latest_skips_earlier_events(client: Client, topic: str) -> None:
    client.publish(topic, "old")
    with client.subscribe(topic, "late", "c", start_from="latest") as sub:
        client.publish(topic, "new")
        ev = next(iter(sub))
        assert ev.payload == b"new"
        sub.ack(ev)


def test_outbox_status_without_an_outbox(client: Client) -> None:
    st = client.outbox_status()
    assert not st.enabled


def test_undeclared_topic_is_topic_unknown(start_sidecar: Callable[..., Sidecar], tmp_path: Path) -> None:
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text("events:\n  topics: [orders.placed]\n")
    sc = start_sidecar("--config", str(cfg))
    with Client(sc.addr) as c:
        assert not c.publish("orders.placed", "x").duplicate
        with pytest.raises(TopicUnknown) as info:
            c.publish("orders.other", "x")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.reason == "TOPIC_UNKNOWN"
        with pytest.raises(TopicUnknown):
            c.subscribe("orders.other", "g", "c")


def test_sidecar_shutdown_ends_the_subscription_with_shutting_down(start_sidecar: Callable[..., Sidecar]) -> None:
    sc = start_sidecar()
    with Client(sc.addr) as c:
        sub = c.subscribe("py-test.shutdown", "g", "c")
        threading.Timer(0.3, sc.stop).start()  # SIGTERM: a graceful stop
        with pytest.raises(Unavailable) as info:
            next(iter(sub))
        assert isinstance(info.value, ShuttingDown), repr(info.value)
