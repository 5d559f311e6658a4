"""Every ErrorInfo reason the sidecar sends (resilience_sidecar/reasons.py,
generated from internal/api/status.go) has its typed error: the list is
walked, and each reason is provoked from the real sidecar on real Redis
and HTTP upstreams and must arrive as its class."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Dict

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from conftest import Rig
from harness import Redis, Sidecar
from resilience_sidecar import (
    Client,
    DeadlineExceeded,
    InvalidArgument,
    SidecarError,
    SidecarUnreachable,
    Unavailable,
    reasons,
)
from resilience_sidecar.errors import _BY_REASON, error_class, from_rpc_error
from resilience_sidecar.v1 import (
    breaker_pb2,
    clock_pb2,
    idempotency_pb2,
    lock_pb2,
    ratelimit_pb2,
    ratelimit_pb2_grpc,
    saga_pb2,
)

GENERIC = {SidecarError, Unavailable, InvalidArgument, DeadlineExceeded, SidecarUnreachable}


def test_every_generated_reason_has_its_own_class() -> None:
    assert reasons.ALL_REASONS, "the generated list is empty"
    assert set(_BY_REASON) == set(reasons.ALL_REASONS), "a reason without a class, or a class for no reason"
    for reason in reasons.ALL_REASONS:
        cls = error_class(grpc.StatusCode.UNKNOWN, reason)
        assert cls not in GENERIC and issubclass(cls, SidecarError), reason
        assert cls.REASON == reason
        err = cls(grpc.StatusCode.UNKNOWN, reason, "m", metadata={"k": "v"})
        assert err.reason == reason and err.metadata == {"k": "v"}
    assert error_class(grpc.StatusCode.UNAVAILABLE, "") is SidecarUnreachable
    assert error_class(grpc.StatusCode.DEADLINE_EXCEEDED, "") is DeadlineExceeded
    assert error_class(grpc.StatusCode.UNAVAILABLE, "SOMETHING_NEW") is Unavailable
    assert from_rpc_error(ValueError("x")).__class__ is ValueError


@pytest.fixture
def own_redis(tmp_path: Path):
    r = Redis(tmp_path)
    yield r
    r.stop()


def provocations(
    rig: Rig, store: Client, redis: Redis, dead_port: int, start_sidecar: Callable[..., Sidecar]
) -> Dict[str, Callable[[], object]]:
    c = rig.client
    key = f"reasons/{time.monotonic_ns()}"

    def lease_lost() -> object:
        return c.locks.ReleaseLock(lock_pb2.ReleaseLockRequest(key=key, lease_id="0" * 32))

    def limit() -> object:
        c.clocks.ObserveLamport(clock_pb2.ObserveLamportRequest(clock=key, timestamp=2**63 - 2))
        return c.clocks.NextLamport(clock_pb2.NextLamportRequest(clock=key))

    def shutting_down() -> object:
        sc = start_sidecar(name="to-shut-down")
        with Client(sc.addr) as sc_client:
            sub = sc_client.subscribe("py-test.reasons", "g", "c")
            threading.Timer(0.3, sc.stop).start()
            return next(iter(sub))

    def mismatch() -> object:
        r = idempotency_pb2.CheckOrRecordIdempotencyRequest(key=key, fingerprint="a")
        c.idempotency.CheckOrRecordIdempotency(r)
        r.fingerprint = "b"
        return c.idempotency.CheckOrRecordIdempotency(r)

    def clock_skew() -> object:
        ahead_ms = int((time.time() + 3600) * 1000)
        return c.clocks.UpdateHlc(clock_pb2.UpdateHlcRequest(encoded=ahead_ms << 16))

    def saga_conflict() -> object:
        c.sagas.StartSaga(saga_pb2.StartSagaRequest(saga_id=key, name="one"))
        return c.sagas.StartSaga(saga_pb2.StartSagaRequest(saga_id=key, name="another"))

    def breaker_open() -> object:
        try:
            c.execute_call("tripwire", "/")
        except SidecarError:
            pass
        return c.execute_call("tripwire", "/")

    def permit_unknown() -> object:
        p = c.breakers.AllowCall(breaker_pb2.AllowCallRequest(breaker=key))
        r = breaker_pb2.ReportCallRequest(permit_id=p.permit_id, outcome=breaker_pb2.CALL_OUTCOME_SUCCESS)
        c.breakers.ReportCall(r)
        return c.breakers.ReportCall(r)

    def upstream_timeout() -> object:
        rig.upstream.answer("/slow", 200, b"late", delay=1.0)
        return c.execute_call("slow", "/slow")

    def store_state(*setup: str, undo: tuple) -> Callable[[], object]:
        def provoke() -> object:
            for cmd in setup:
                redis.command(*cmd.split())
            try:
                return store.locks.AcquireLock(lock_pb2.AcquireLockRequest(key=f"{key}/{setup[-1]}", ttl=Duration(seconds=5)))
            finally:
                redis.command(*undo)

        return provoke

    def store_unavailable() -> object:
        redis.pause()
        try:
            return store.locks.AcquireLock(lock_pb2.AcquireLockRequest(key=f"{key}/paused"))
        finally:
            redis.resume()

    return {
        reasons.LEASE_LOST: lease_lost,
        reasons.STORE_UNAVAILABLE: store_unavailable,
        reasons.LIMIT_EXCEEDED: limit,
        reasons.SHUTTING_DOWN: shutting_down,
        reasons.IDEMPOTENCY_KEY_MISMATCH: mismatch,
        reasons.CLOCK_SKEW: clock_skew,
        reasons.SAGA_NOT_FOUND: lambda: c.sagas.GetSaga(saga_pb2.GetSagaRequest(saga_id=key + "/none")),
        reasons.SAGA_STATE_CONFLICT: saga_conflict,
        reasons.TOPIC_UNKNOWN: lambda: c.publish("undeclared.topic", b"x"),
        reasons.LIMITER_UNKNOWN: lambda: ratelimit_pb2_grpc.RateLimitServiceStub(c.channel).Take(
            ratelimit_pb2.TakeRequest(limiter="undeclared")
        ),
        reasons.BREAKER_OPEN: breaker_open,
        reasons.UPSTREAM_UNKNOWN: lambda: c.execute_call("no-such-upstream", "/"),
        reasons.PERMIT_UNKNOWN: permit_unknown,
        reasons.UPSTREAM_UNAVAILABLE: lambda: c.execute_call("down", "/"),
        reasons.UPSTREAM_TIMEOUT: upstream_timeout,
        reasons.STORE_FULL: store_state(
            "CONFIG SET maxmemory-policy noeviction", "CONFIG SET maxmemory 1", undo=("CONFIG", "SET", "maxmemory", "0")
        ),
        reasons.STORE_READ_ONLY: store_state(f"REPLICAOF 127.0.0.1 {dead_port}", undo=("REPLICAOF", "NO", "ONE")),
        reasons.REPLICATION_SHORTFALL: store_state(
            "CONFIG SET min-replicas-to-write 1", undo=("CONFIG", "SET", "min-replicas-to-write", "0")
        ),
    }


@pytest.mark.scenario("errors-every-reason")
def test_every_reason_from_the_real_sidecar_is_its_typed_error(rig: Rig, own_redis: Redis, start_sidecar) -> None:
    from harness import free_port

    store_sc = start_sidecar("--store-timeout", "300ms", redis_url=own_redis.url, name="own-redis")
    with Client(store_sc.addr, timeout=5.0) as store:
        cases = provocations(rig, store, own_redis, free_port(), start_sidecar)
        assert set(cases) == set(reasons.ALL_REASONS), "every generated reason needs a provocation here"
        seen = {}
        for reason in reasons.ALL_REASONS:
            with pytest.raises(SidecarError) as info:
                cases[reason]()
            err = info.value
            seen[reason] = type(err).__name__
            assert err.reason == reason, f"{reason}: got {err!r}"
            assert type(err) is _BY_REASON[reason], f"{reason}: got {type(err).__name__}"
    print("reasons seen:", seen)


def test_unreachable_and_deadline_are_typed(start_sidecar) -> None:
    from harness import free_port

    with Client(f"127.0.0.1:{free_port()}", timeout=2.0) as c:
        with pytest.raises(SidecarUnreachable) as info:
            c.locks.GetLock(lock_pb2.GetLockRequest(key="k"))
        assert info.value.reason == "" and "running" in str(info.value)
    sc = start_sidecar(name="hung")
    with Client(sc.addr, timeout=0.5) as c:
        c.wait_ready(10)
        sc.pause()
        try:
            with pytest.raises(DeadlineExceeded) as dinfo:
                c.locks.GetLock(lock_pb2.GetLockRequest(key="k"))
            assert type(dinfo.value) is DeadlineExceeded and dinfo.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            sc.resume()
