"""The asyncio client (grpc.aio) against the real sidecar: the same helpers
and guarantees as the sync client. Each test runs its coroutine with
asyncio.run (no plugin)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from opentelemetry.sdk.trace import TracerProvider

from conftest import Rig
from resilience_sidecar import (
    BreakerOpen,
    DeadlineExceeded,
    IdempotencyKeyMismatch,
    LeaseLost,
    NotAcquired,
    ReleaseNotConfirmed,
    SidecarUnreachable,
    compensation,
    current_execution,
)
from resilience_sidecar.aio import AsyncClient, AsyncExecution
from resilience_sidecar.v1 import lock_pb2, saga_pb2
from upstream import traceparent_trace_id


def run(coro):
    return asyncio.run(coro)


def test_async_with_lock_renews_blocks_others_and_releases(sidecar, unique: str) -> None:
    async def main() -> None:
        async with AsyncClient(sidecar.addr) as c:
            key = f"{unique}/k"
            async with c.lock(key, ttl=1, owner="a") as lease:
                assert lease.fencing_token > 0 and not lease.lost.is_set()
                with pytest.raises(NotAcquired) as info:
                    async with c.lock(key, wait=0.2, owner="b"):
                        pytest.fail("granted twice")
                assert info.value.holder == "a"
                first = lease.confirmed_at
                await asyncio.sleep(2.5)  # real time: past the 1 s TTL, only the renewals keep it
                lease.check()
                assert lease.confirmed_at > first
            assert lease.released
            assert not (await c.locks.GetLock(lock_pb2.GetLockRequest(key=key))).held

    run(main())


def test_async_lock_max_hold_is_lease_lost(sidecar, unique: str) -> None:
    async def main() -> None:
        async with AsyncClient(sidecar.addr) as c:
            with pytest.raises(LeaseLost) as info:
                async with c.lock(f"{unique}/mh", max_hold=0.3) as lease:
                    await asyncio.wait_for(lease.lost.wait(), 10)
            assert info.value.lost_reason == "MAX_HOLD"

    run(main())


@pytest.mark.scenario("lock-explicit-handle")
def test_async_explicit_handle(sidecar, unique: str) -> None:
    async def main() -> None:
        async with AsyncClient(sidecar.addr) as c:
            lock = c.lock(f"{unique}/h", ttl=2)
            assert not await lock.locked() and lock.fencing_token is None
            assert await lock.acquire()
            token = lock.fencing_token
            assert token and await lock.locked() and lock.owned()
            other = c.lock(f"{unique}/h", wait=0.1)
            assert not await other.acquire() and other.not_acquired.fencing_token == token
            await lock.extend(5)
            await asyncio.sleep(2.5)  # real time: past the grant's 2 s TTL
            assert lock.owned()
            await lock.release()
            assert not await lock.locked() and not lock.owned()

            short = c.lock(f"{unique}/short", ttl=0.5)
            assert await short.acquire()
            lease = short.lease
            await asyncio.wait_for(lease.lost.wait(), 5)
            assert lease.lost_reason == "RENEWAL_OVERDUE"
            with pytest.raises(LeaseLost):
                await short.release()

    run(main())


@pytest.mark.scenario("lock-frozen-sidecar")
def test_async_frozen_sidecar_loses_the_lease_by_the_loop_clock(start_sidecar, unique: str) -> None:
    a = start_sidecar(name="aio-frozen")
    b = start_sidecar(name="aio-b")
    key = f"{unique}/frozen"

    async def main() -> None:
        async with AsyncClient(a.addr, timeout=2.0) as ca, AsyncClient(b.addr) as cb:
            got: dict = {}

            async def contend() -> None:
                async with cb.lock(key, ttl=2, wait=15) as lb:
                    got["at"] = time.monotonic()
                    got["token"] = lb.fencing_token

            with pytest.raises(LeaseLost) as info:
                async with ca.lock(key, ttl=2, timeout=10) as lease:
                    first = lease.confirmed_at
                    while lease.confirmed_at == first:
                        await asyncio.sleep(0.01)  # real time: wait for a renewal
                    a.pause()  # blocks the loop a few ms at most; the sidecar is stopped after
                    task = asyncio.create_task(contend())
                    await asyncio.wait_for(lease.lost.wait(), 5)
                    await asyncio.wait_for(task, 20)
                    t0 = time.monotonic()
            assert time.monotonic() - t0 < 2.0
            assert info.value.lost_reason == "RENEWAL_OVERDUE"
            assert lease.lost_at - lease.confirmed_at <= 2.2
            assert lease.lost_at < got["at"] and got["token"] > lease.fencing_token
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await ca.lock(f"{key}/2", wait=0.5).acquire()
            with pytest.raises(DeadlineExceeded):
                async with ca.lock(f"{key}/3", wait=0.5):
                    pass
            with pytest.raises(DeadlineExceeded):
                await ca.idempotent(f"{key}/op", "fp", lambda: None, wait=0.5, unavailable_retries=0)
            with pytest.raises(DeadlineExceeded):
                await ca.subscribe("py-test.frozen", "g", "c")
            assert time.monotonic() - t0 < 4 * 2.5 + 1.0

    try:
        run(main())
    finally:
        a.resume()


def test_async_release_not_confirmed_and_killed_sidecar(start_sidecar, unique: str) -> None:
    a = start_sidecar(name="aio-exit")
    k = start_sidecar(name="aio-killed")

    async def main() -> None:
        async with AsyncClient(a.addr, timeout=5.0) as ca, AsyncClient(k.addr, timeout=2.0) as ck:
            with pytest.raises(ReleaseNotConfirmed):
                async with ca.lock(f"{unique}/exit", ttl=1, timeout=10):
                    a.pause()
            handle = ck.lock(f"{unique}/h", ttl=10)
            assert await handle.acquire(timeout=10)
            with pytest.raises(LeaseLost) as info:
                async with ck.lock(f"{unique}/k", ttl=10, timeout=10) as lease:
                    k.kill()
                    await asyncio.wait_for(lease.lost.wait(), 10)
            assert info.value.lost_reason in ("STREAM_ENDED", "RENEWAL_OVERDUE")
            with pytest.raises(ReleaseNotConfirmed) as rinfo:
                await handle.release()
            assert isinstance(rinfo.value.cause, SidecarUnreachable)

    try:
        run(main())
    finally:
        a.resume()


@pytest.mark.scenario("idempotent-run-once-stored-result")
def test_async_idempotent_decorator_runs_once(sidecar, unique: str) -> None:
    runs = []

    async def main() -> None:
        async with AsyncClient(sidecar.addr) as c1, AsyncClient(sidecar.addr) as c2:
            def decorate(c: AsyncClient):
                @c.idempotent(key_fn=lambda order, amount: f"{unique}/charge/{order}")
                async def charge(order: str, amount: int) -> dict:
                    ex = current_execution()
                    assert isinstance(ex, AsyncExecution) and ex.attempt == 1
                    await ex.checkpoint("charging")
                    runs.append(order)
                    await asyncio.sleep(0.3)  # real time: the other run waits meanwhile
                    return {"order": order, "amount": amount, "n": len(runs)}

                return charge

            a, b = await asyncio.gather(decorate(c1)("o-1", 100), decorate(c2)("o-1", 100))
            assert a == b == {"order": "o-1", "amount": 100, "n": 1}
            assert runs == ["o-1"]
            with pytest.raises(IdempotencyKeyMismatch):
                await decorate(c1)("o-1", 999)
            with pytest.raises(TypeError):
                c1.idempotent(key="k")(lambda: 1)  # a plain function: the sync client's job

            # A failing (or cancelled) run releases the key: the next runs.
            async def boom() -> None:
                raise ConnectionError("down")

            with pytest.raises(ConnectionError):
                await c1.idempotent(f"{unique}/flaky", "fp", boom)
            assert await c1.idempotent(f"{unique}/flaky", "fp", lambda: "sync value") == "sync value"

    run(main())


@pytest.mark.scenario("breaker-guard-opens-and-recovers")
def test_async_guard_opens_and_recovers(rig: Rig) -> None:
    async def main() -> None:
        async with AsyncClient(rig.sidecar.addr) as c:
            guarded = c.breaker("guarded")
            calls = []

            @guarded
            async def fetch(fail: bool) -> str:
                calls.append(fail)
                if fail:
                    raise ConnectionError("down")
                return "ok"

            for _ in range(3):
                with pytest.raises(ConnectionError):
                    await fetch(True)
            with pytest.raises(BreakerOpen) as info:
                await fetch(False)
            assert len(calls) == 3 and await guarded.state() == "open"
            await asyncio.sleep(info.value.retry_delay)  # real time: the open duration
            assert await fetch(False) == "ok"
            assert await guarded.state() == "closed"

            # A cancelled call is reported as ignored, not as a failure.
            async def hang() -> None:
                await asyncio.sleep(30)

            for _ in range(4):
                task = asyncio.create_task(guarded.call(hang))
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await guarded.state() == "closed"

    run(main())


@pytest.mark.scenario("tracing-propagates-traceparent")
def test_async_execute_call_and_traceparent(rig: Rig) -> None:
    tracer = TracerProvider().get_tracer("app")

    async def main() -> None:
        async with AsyncClient(rig.sidecar.addr) as c:
            rig.upstream.answer("/aio", 202, b"accepted")
            with tracer.start_as_current_span("async-checkout") as span:
                r = await c.execute_call("test", "/aio", method="PUT", body=b"x")
            assert (r.status, r.body) == (202, b"accepted")
            seen = [q for q in rig.upstream.requests if q.path == "/aio"][0]
            assert traceparent_trace_id(seen.headers.get("traceparent")) == format(span.get_span_context().trace_id, "032x")

    run(main())


@pytest.mark.scenario("saga-compensates-in-reverse")
def test_async_saga_compensates_in_reverse(rig: Rig) -> None:
    sid = f"py-aio-{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        async with AsyncClient(rig.sidecar.addr) as c:
            async def step(n: int) -> int:
                if n == 3:
                    raise RuntimeError("third step failed")
                return n

            with pytest.raises(RuntimeError):
                async with c.saga(sid, "aio-order", timeout=60) as saga:
                    for n in (1, 2, 3):
                        await saga.step(f"s{n}", step, n, compensation=compensation("test", f"/aio-undo/{n}"))
            final = await saga.wait(30)
            assert final.state == saga_pb2.SAGA_STATE_COMPENSATED

    run(main())
    calls = rig.upstream.wait_for(3, path_prefix="/aio-undo/")
    assert [q.path for q in calls] == ["/aio-undo/3", "/aio-undo/2", "/aio-undo/1"]


@pytest.mark.scenario("events-redelivery")
def test_async_subscription_nack_is_redelivered(sidecar) -> None:
    topic = f"py-aio.{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        async with AsyncClient(sidecar.addr) as c:
            await c.publish(topic, "e1")
            got = []
            async with c.subscribe(topic, "g", "c1", visibility_timeout=0.5) as sub:
                assert sub.group_created

                async def handle(ev) -> None:
                    got.append(ev.delivery_count)
                    if ev.delivery_count == 1:
                        raise RuntimeError("first attempt fails")
                    sub.cancel()

                await asyncio.wait_for(sub.run(handle), 15)
            assert got == [1, 2]

            # Not settled at all: redelivered after the visibility timeout.
            await c.publish(topic, "e2")
            sub2 = await c.subscribe(topic, "g2", "c1", visibility_timeout=0.3, start_from="latest")
            await c.publish(topic, "e3")
            first = await asyncio.wait_for(sub2.__anext__(), 10)
            again = await asyncio.wait_for(sub2.__anext__(), 10)
            assert again.event_id == first.event_id and again.delivery_count == 2
            assert await sub2.ack(again)
            sub2.cancel()
            assert [e async for e in sub2] == []

    run(main())


def test_async_lamport_clock_and_unreachable(sidecar, unique: str) -> None:
    from harness import free_port

    async def main() -> None:
        async with AsyncClient(sidecar.addr) as c:
            clock = c.lamport_clock(f"{unique}/c")
            a = await clock.stamp()
            assert await clock.observe(a + 100) == a + 101 and await clock.current() == a + 101
        async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=1.0) as dead:
            with pytest.raises(SidecarUnreachable):
                await dead.lamport_clock("x").stamp()
            with pytest.raises(SidecarUnreachable):
                await dead.wait_ready(0.3)

    run(main())


def test_the_sync_client_works_from_threads_while_a_loop_runs(sidecar, unique: str) -> None:
    """The sync lease clock runs on its own thread, the async one on the loop:
    both in one process."""
    from resilience_sidecar import Client

    def sync_part(out: list) -> None:
        with Client(sidecar.addr) as c, c.lock(f"{unique}/sync", ttl=1) as lease:
            time.sleep(1.5)  # real time: renewals must keep the lease past its TTL
            lease.check()
            out.append(lease.fencing_token)

    async def main() -> None:
        out: list = []
        t = threading.Thread(target=sync_part, args=(out,))
        t.start()
        async with AsyncClient(sidecar.addr) as c:
            async with c.lock(f"{unique}/async", ttl=1) as lease:
                await asyncio.sleep(1.5)  # real time: renewals must keep the lease past its TTL
                lease.check()
        await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
        assert out

    run(main())
