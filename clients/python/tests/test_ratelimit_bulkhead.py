"""Rate limits (``take``, ``@rate_limited``) and bulkheads (``with
bulkhead``), sync and asyncio, against the real sidecar on a real Redis,
with a config file declaring the limiters."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from harness import Sidecar
from resilience_sidecar import (
    BulkheadFull,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    LeaseLost,
    LimiterUnknown,
    RateDecision,
    RateLimited,
)
from resilience_sidecar.aio import AsyncClient
from resilience_sidecar.v1 import semaphore_pb2

# "hourly" refills one token an hour (nothing refills during a test),
# "slow" one every 3 s (long enough for a refusal, short enough to wait for).
RATELIMIT_CONFIG = """
ratelimits:
  hourly: {algorithm: gcra, rate: 1, period: 1h, burst: 3}
  slow: {algorithm: gcra, rate: 1, period: 3s, burst: 1}
  window: {algorithm: sliding_window, limit: 2, window: 1h}
"""


@pytest.fixture
def limited(start_sidecar: Callable[..., Sidecar], tmp_path: Path) -> Iterator[Client]:
    cfg = tmp_path / "ratelimits.yaml"
    cfg.write_text(RATELIMIT_CONFIG)
    sc = start_sidecar("--config", str(cfg), name="ratelimits")
    c = Client(sc.addr, timeout=10.0)
    yield c
    c.close()


@pytest.mark.scenario("ratelimit-take-decision")
@pytest.mark.parametrize("limiter,capacity", [("hourly", 3), ("window", 2)])
def test_take_answers_a_typed_decision(limited: Client, unique: str, limiter: str, capacity: int) -> None:
    key = f"{unique}/user"
    for i in range(capacity):
        d = limited.take(limiter, key)
        assert isinstance(d, RateDecision)
        assert d and d.allowed and d.remaining == capacity - 1 - i and d.limit == capacity, d
        assert d.retry_after == 0 and d.reset_after > 0, d
    d = limited.take(limiter, key)
    assert not d and d.remaining == 0 and d.limit == capacity, d
    assert 0 < d.retry_after <= 3600, d

    other = f"{unique}/other"
    d = limited.take(limiter, other, 2)
    assert d.allowed and d.remaining == capacity - 2, d
    assert not limited.take(limiter, other, capacity).allowed


@pytest.mark.parametrize(
    "limiter,cost,exc",
    [("nope", 1, LimiterUnknown), ("hourly", -1, InvalidArgument), ("hourly", 4, InvalidArgument)],
)
def test_take_errors_are_typed(limited: Client, limiter: str, cost: int, exc: type) -> None:
    with pytest.raises(exc):
        limited.take(limiter, "k", cost)
    ran = []

    @limited.rate_limited(limiter, "k", cost)
    def f() -> None:
        ran.append(1)

    with pytest.raises(exc):
        f()
    assert not ran


@pytest.mark.scenario("ratelimit-wait-then-typed-error")
def test_rate_limited_waits_then_raises_typed(limited: Client, unique: str) -> None:
    runs: List[str] = []

    @limited.rate_limited("slow", key=lambda user: f"{unique}/{user}", wait=0.1)
    def call(user: str) -> str:
        runs.append(user)
        return user

    @limited.rate_limited("slow", key=lambda user: f"{unique}/{user}", wait=10)
    def patient(user: str) -> str:
        runs.append(user)
        return user

    assert call("a") == "a" and runs == ["a"]
    with pytest.raises(RateLimited) as info:
        call("a")
    assert runs == ["a"], "a refused call must not run"
    e = info.value
    assert e.limiter == "slow" and e.key == f"{unique}/a" and e.cost == 1
    assert 0 < e.retry_after <= 3 and e.decision is not None and not e.decision.allowed
    # The token comes back within 3 s: a wait of 10 s gets it.
    assert patient("a") == "a" and runs == ["a", "a"]
    assert not limited.take("slow", f"{unique}/a").allowed, "the waited-for token was taken"
    assert call("b") == "b", "each key has its own count"


def test_async_rate_limited_and_take(start_sidecar: Callable[..., Sidecar], tmp_path: Path, unique: str) -> None:
    cfg = tmp_path / "ratelimits.yaml"
    cfg.write_text(RATELIMIT_CONFIG)
    sc = start_sidecar("--config", str(cfg), name="ratelimits-aio")

    async def main() -> None:
        async with AsyncClient(sc.addr) as c:
            d = await c.take("hourly", f"{unique}/k", 3)
            assert d.allowed and d.remaining == 0 and d.limit == 3
            runs = []

            @c.rate_limited("slow", f"{unique}/s")
            async def f() -> int:
                runs.append(1)
                return 7

            assert await f() == 7
            with pytest.raises(RateLimited) as info:
                await f()
            assert runs == [1] and 0 < info.value.retry_after <= 3

            with pytest.raises(TypeError):
                c.rate_limited("slow")(lambda: None)

    asyncio.run(main())

    # The sync client's decorator on an async def.
    with Client(sc.addr) as c:

        @c.rate_limited("hourly", f"{unique}/sync-on-async", cost=3)
        async def g() -> int:
            return 1

        assert asyncio.run(g()) == 1
        with pytest.raises(RateLimited):
            asyncio.run(g())


@pytest.mark.scenario("bulkhead-limit-holds")
def test_bulkhead_limit_holds(start_sidecar: Callable[..., Sidecar], unique: str) -> None:
    scs = [start_sidecar(name="bulkhead-a"), start_sidecar(name="bulkhead-b")]
    clients = [Client(sc.addr, timeout=10.0) for sc in scs]
    name = f"{unique}/bulkhead"
    limit, workers, calls = 2, 6, 4
    mu = threading.Lock()
    state = {"inside": 0, "most": 0}
    tokens: List[int] = []
    errors: List[BaseException] = []

    def work(w: int) -> None:
        c = clients[w % 2]
        try:
            for _ in range(calls):
                with c.bulkhead(name, limit, wait=60, owner=f"worker-{w}") as permit:
                    with mu:
                        state["inside"] += 1
                        state["most"] = max(state["most"], state["inside"])
                        tokens.append(permit.fencing_token)
                    time.sleep(0.02)  # real time: the others queue up meanwhile
                    with mu:
                        state["inside"] -= 1
                    permit.check()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert state["most"] == limit, f"at most {state['most']} inside; want exactly {limit}"
        assert len(tokens) == workers * calls and len(set(tokens)) == len(tokens), "a fencing token twice"

        # Full: two holders inside, a third that does not wait is refused.
        c = clients[0]
        with c.bulkhead(name, limit), c.bulkhead(name, limit):
            ran = []
            with pytest.raises(BulkheadFull) as info:
                with c.bulkhead(name, limit):
                    ran.append(1)
            assert not ran and info.value.held == limit and info.value.limit == limit

            @c.bulkhead(name, limit)
            def guarded() -> None:
                ran.append(1)

            with pytest.raises(BulkheadFull):
                guarded()
            assert not ran
        assert c.semaphores.GetSemaphore(semaphore_pb2.GetSemaphoreRequest(name=name)).held == 0
    finally:
        for c in clients:
            c.close()


def test_bulkhead_max_hold_is_lease_lost_and_errors_pass_through(client: Client, unique: str) -> None:
    name = f"{unique}/mh"
    with pytest.raises(LeaseLost) as info:
        with client.bulkhead(name, 1, ttl=1, max_hold=0.3) as permit:
            assert permit.lost.wait(5)
            assert permit.lost_reason == "MAX_HOLD"
            permit.check()  # raises the loss
    assert info.value.lost_reason == "MAX_HOLD"
    with pytest.raises(ValueError):
        with client.bulkhead(name, 1):
            raise ValueError("boom")
    assert client.semaphores.GetSemaphore(semaphore_pb2.GetSemaphoreRequest(name=name)).held == 0
    with pytest.raises(InvalidArgument):
        with client.bulkhead(name, 0):
            pytest.fail("ran")


def test_async_bulkhead(sidecar, unique: str) -> None:
    name = f"{unique}/aio"

    async def main() -> None:
        async with AsyncClient(sidecar.addr) as c:
            async with c.bulkhead(name, 1, ttl=1) as permit:
                assert permit.fencing_token > 0
                with pytest.raises(BulkheadFull):
                    async with c.bulkhead(name, 1):
                        pytest.fail("granted past the limit")
                first = permit.confirmed_at
                await asyncio.sleep(1.5)  # real time: past the 1 s TTL, only the renewals keep it
                permit.check()
                assert permit.confirmed_at > first
            assert permit.released

            @c.bulkhead(name, 1, wait=5)
            async def guarded() -> int:
                return 3

            assert await asyncio.gather(guarded(), guarded()) == [3, 3]
            held = await c.semaphores.GetSemaphore(semaphore_pb2.GetSemaphoreRequest(name=name))
            assert held.held == 0

    asyncio.run(main())


@pytest.mark.scenario("bulkhead-permit-lost-by-client-clock")
def test_frozen_sidecar_loses_the_permit_by_the_client_clock(start_sidecar, unique: str) -> None:
    a = start_sidecar(name="bulkhead-frozen-a")
    b = start_sidecar(name="bulkhead-healthy-b")
    name = f"{unique}/frozen"
    ca = Client(a.addr, timeout=2.0)
    cb = Client(b.addr, timeout=10.0)
    b_got: dict = {}

    def contend() -> None:
        with cb.bulkhead(name, 1, ttl=2, wait=15, owner="b") as pb:
            b_got["at"] = time.monotonic()
            b_got["token"] = pb.fencing_token

    try:
        with pytest.raises(LeaseLost) as info:
            with ca.bulkhead(name, 1, ttl=2, owner="a", timeout=10) as permit:
                first = permit.confirmed_at
                deadline = time.monotonic() + 10
                while permit.confirmed_at == first:  # the last confirmation is a renewal
                    assert time.monotonic() < deadline, "no renewal arrived"
                    time.sleep(0.01)  # real time: the sidecar renews every ttl/3
                a.pause()
                contender = threading.Thread(target=contend)
                contender.start()
                assert permit.lost.wait(5), "the permit must be lost by the client's clock"
                lost_at = permit.lost_at
                contender.join(20)
                exit_started = time.monotonic()
        exit_took = time.monotonic() - exit_started
        assert permit.lost_reason == "RENEWAL_OVERDUE" and info.value.lost_reason == "RENEWAL_OVERDUE"
        since_renewal = lost_at - permit.confirmed_at
        print(f"frozen sidecar: permit lost {since_renewal:.3f}s after the last renewal received")
        assert since_renewal <= 2.2, f"lost {since_renewal:.3f}s after the last renewal (TTL 2 s)"
        assert "at" in b_got, "the second client never got the permit through sidecar B"
        assert lost_at < b_got["at"], "the permit must be lost before another client acquires it"
        assert b_got["token"] > permit.fencing_token
        assert exit_took < 2.0, f"leaving the block took {exit_took:.2f}s"
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            with ca.bulkhead(f"{name}/2", 1, wait=1):
                pytest.fail("ran")
        assert time.monotonic() - t0 < 1 + 2.0 + 1.0
    finally:
        a.resume()
        ca.close()
        cb.close()
