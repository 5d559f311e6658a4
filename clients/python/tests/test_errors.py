"""Typed errors decoded from the real sidecar's statuses, and failures of the
sidecar itself (stopped, hung, store down) surfacing within the deadline."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from harness import Redis
from resilience_sidecar import (
    Client,
    DeadlineExceeded,
    IdempotencyKeyMismatch,
    InvalidArgument,
    LeaseLost,
    SidecarError,
    SidecarUnreachable,
    StoreUnavailable,
    Unauthenticated,
    Unavailable,
)
from resilience_sidecar.errors import error_class
from resilience_sidecar.v1 import clock_pb2, lock_pb2

UNKNOWN_LEASE = "0123456789abcdef0123456789abcdef"  # well-formed: 128 bits in hex


def test_release_with_unknown_lease_is_lease_lost(client: Client, unique: str) -> None:
    with pytest.raises(LeaseLost) as info:
        client.locks.ReleaseLock(lock_pb2.ReleaseLockRequest(key=f"{unique}/k", lease_id=UNKNOWN_LEASE))
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "LEASE_LOST"
    assert "lease lost" in err.message
    assert isinstance(err, SidecarError) and isinstance(err.rpc_error, grpc.RpcError)
    assert "FAILED_PRECONDITION LEASE_LOST" in str(err)


def test_lease_lost_after_a_real_lease_expired(client: Client, unique: str) -> None:
    key = f"{unique}/expired"
    resp = client.locks.AcquireLock(lock_pb2.AcquireLockRequest(key=key, ttl=Duration(nanos=200_000_000)))
    assert resp.acquired
    time.sleep(0.5)
    with pytest.raises(LeaseLost):
        client.locks.RenewLock(lock_pb2.RenewLockRequest(key=key, lease_id=resp.lease.lease_id))


def test_invalid_argument_names_the_fields(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.locks.AcquireLock(lock_pb2.AcquireLockRequest(key="", ttl=Duration(nanos=1_000_000)))
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "key" in err.violations and "ttl" in err.violations
    assert err.violations["key"]  # a description, not just the name


def test_invalid_argument_on_other_services(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.clocks.NextLamport(clock_pb2.NextLamportRequest(clock=""))
    assert "clock" in info.value.violations


def test_future_and_with_call_raise_typed_errors_too(client: Client) -> None:
    fut = client.locks.GetLock.future(lock_pb2.GetLockRequest(key=""))
    with pytest.raises(InvalidArgument):
        fut.result()
    assert isinstance(fut.exception(), InvalidArgument)
    resp, call = client.locks.GetLock.with_call(lock_pb2.GetLockRequest(key="with-call"))
    assert call.code() == grpc.StatusCode.OK and not resp.held


@pytest.mark.parametrize("reason", ["STORE_UNAVAILABLE", "STORE_FULL", "STORE_READ_ONLY", "REPLICATION_SHORTFALL"])
def test_store_states_are_store_unavailable(reason: str) -> None:
    cls = error_class(grpc.StatusCode.UNAVAILABLE, reason)
    assert issubclass(cls, StoreUnavailable) and cls.REASON == reason
    err = cls(grpc.StatusCode.UNAVAILABLE, reason, "store", retry_delay=1.0)
    assert isinstance(err, Unavailable) and err.reason == reason


def test_errors_survive_pickling() -> None:
    err = IdempotencyKeyMismatch(grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_MISMATCH", "m", 1.5, {"f": "d"})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is IdempotencyKeyMismatch
    assert (back.code, back.reason, back.message, back.retry_delay, back.violations) == (
        err.code, err.reason, err.message, err.retry_delay, err.violations)


def test_stopped_sidecar_is_a_clear_error_not_a_hang(start_sidecar, unique: str) -> None:
    sc = start_sidecar(name="to-stop")
    c = Client(sc.addr, timeout=2.0)
    try:
        assert not c.locks.GetLock(lock_pb2.GetLockRequest(key=f"{unique}/k")).held
        sc.stop()
        t0 = time.monotonic()
        with pytest.raises(SidecarUnreachable) as info:
            c.locks.GetLock(lock_pb2.GetLockRequest(key=f"{unique}/k"))
        assert sc.addr in str(info.value) and "running" in str(info.value)
        with pytest.raises(Unavailable):
            with c.lock(f"{unique}/k", wait=1):
                pytest.fail("locked through a stopped sidecar")
        with pytest.raises(Unavailable):
            c.idempotent(f"{unique}/op", "fp", lambda: pytest.fail("ran without the sidecar"))
        assert time.monotonic() - t0 < 2.0 * 3, "each call is bounded by the 2 s deadline"
    finally:
        c.close()


#: Real time the sidecar stays down in the reconnect scenario. gRPC's default
#: backoff (1 s, x1.6 each attempt, +-20 % jitter, up to 120 s) makes its
#: attempts at about 1, 2.6, 5.2, 9.3 and 15.8 s: after 11.5 s down, the next
#: one is about 4 s away, past the 3 s deadline below (a client without the
#: 1 s cap failed this test in 5 runs of 5).
DOWN_FOR = 11.5


@pytest.mark.scenario("reconnect-after-restart")
def test_client_reconnects_within_a_second_after_a_restart(start_sidecar, unique: str) -> None:
    first = start_sidecar(name="before-restart")
    with Client(first.addr, timeout=2.0) as c:
        req = lock_pb2.GetLockRequest(key=f"{unique}/k")
        assert not c.locks.GetLock(req).held
        first.stop()
        failures = 0
        end = time.monotonic() + DOWN_FOR
        while time.monotonic() < end:
            with pytest.raises(SidecarUnreachable):
                c.locks.GetLock(req)
            failures += 1
            time.sleep(0.25)  # real time: the channel keeps failing to connect, its backoff grows
        second = start_sidecar(name="after-restart", port=first.port)
        up = time.monotonic()
        # The next call (waiting for the connection, within 3 s) succeeds.
        assert not c.locks.GetLock(req, timeout=3, wait_for_ready=True).held
        now = time.monotonic()
        print(
            f"reconnect: first call succeeded {now - up:.3f}s after the restarted sidecar was serving "
            f"({now - second.spawned_at:.3f}s after its process started; {failures} failed calls while down)"
        )


def test_wait_ready_gives_up_with_a_clear_error() -> None:
    from harness import free_port

    with Client(f"127.0.0.1:{free_port()}", timeout=2.0) as c:
        with pytest.raises(Unavailable) as info:
            c.wait_ready(timeout=0.5)
    assert "not ready within 0.5s" in str(info.value)


def test_hung_sidecar_hits_the_default_deadline(start_sidecar, unique: str) -> None:
    sc = start_sidecar(name="to-pause")
    c = Client(sc.addr, timeout=1.0)
    try:
        # Connected before the pause, under a bound that load cannot break
        # (the first call also sets up the connection): only the calls
        # made while the sidecar is stopped meet the 1 s default deadline.
        c.wait_ready(timeout=10)
        assert not c.locks.GetLock(lock_pb2.GetLockRequest(key=f"{unique}/k"), timeout=10).held
        sc.pause()  # returns once every thread of the sidecar is stopped
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            c.locks.GetLock(lock_pb2.GetLockRequest(key=f"{unique}/k"))
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(DeadlineExceeded):
            with c.lock(f"{unique}/k", wait=0.5):
                pytest.fail("locked through a hung sidecar")
        assert time.monotonic() - t0 < 10, "bounded by the deadlines (1 s, and 0.5 s wait + 1 s)"
    finally:
        sc.resume()
        c.close()


def test_store_outage_is_store_unavailable_with_retry_info(start_sidecar, tmp_path: Path, unique: str) -> None:
    redis = Redis(tmp_path)
    try:
        sc = start_sidecar("--store-timeout", "200ms", redis_url=redis.url, name="own-redis")
        with Client(sc.addr, timeout=5.0) as c:
            assert c.locks.AcquireLock(lock_pb2.AcquireLockRequest(key=f"{unique}/k")).acquired
            redis.pause()
            try:
                with pytest.raises(StoreUnavailable) as info:
                    c.locks.AcquireLock(lock_pb2.AcquireLockRequest(key=f"{unique}/k2"))
            finally:
                redis.resume()
            err = info.value
            assert isinstance(err, Unavailable) and err.code == grpc.StatusCode.UNAVAILABLE
            assert err.reason == "STORE_UNAVAILABLE"
            assert err.retry_delay is not None and err.retry_delay > 0
    finally:
        redis.stop()


def test_token_from_argument_env_and_file(start_sidecar, tmp_path: Path, monkeypatch, unique: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    sc = start_sidecar("--api-token-file", str(token_file), name="auth")
    req = lock_pb2.GetLockRequest(key=f"{unique}/k")

    with Client(sc.addr, timeout=5.0) as c, pytest.raises(Unauthenticated):
        c.locks.GetLock(req)
    with Client(sc.addr, token="wrong", timeout=5.0) as c, pytest.raises(Unauthenticated):
        c.locks.GetLock(req)
    with Client(sc.addr, token="s3cret-token", timeout=5.0) as c:
        assert not c.locks.GetLock(req).held
        with c.lock(f"{unique}/session") as lease:  # the stream carries the token too
            assert lease.fencing_token > 0

    monkeypatch.setenv("SIDECAR_ADDR", sc.addr)
    monkeypatch.setenv("SIDECAR_API_TOKEN_FILE", str(token_file))
    with Client(timeout=5.0) as c:
        assert c.addr == sc.addr
        assert not c.locks.GetLock(req).held
    monkeypatch.setenv("SIDECAR_API_TOKEN", "s3cret-token")
    monkeypatch.setenv("SIDECAR_API_TOKEN_FILE", str(tmp_path / "missing"))
    with Client(timeout=5.0) as c:  # the variable wins over the file
        assert not c.locks.GetLock(req).held
