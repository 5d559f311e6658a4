"""Lock safety when the sidecar itself fails: frozen (SIGSTOP) or killed
(SIGKILL) mid-hold, with a second sidecar on the same Redis. The lease is
lost by the client's own clock, before anyone else can get the lock, and
every helper returns within its deadline."""

from __future__ import annotations

import threading
import time

import pytest

from resilience_sidecar import (
    Client,
    DeadlineExceeded,
    LeaseLost,
    ReleaseNotConfirmed,
    SidecarUnreachable,
)
from resilience_sidecar.v1 import lock_pb2

TIMEOUT = 2.0  # the frozen side's client call deadline
SLACK = 1.0  # scheduling margin on top of a deadline


def wait_renewal(lease, timeout: float = 10.0) -> None:
    first = lease.confirmed_at
    deadline = time.monotonic() + timeout
    while lease.confirmed_at == first:
        assert time.monotonic() < deadline, "no renewal arrived"
        time.sleep(0.01)  # real time: the sidecar renews every ttl/3


def returns_within(bound: float, fn, exc_type):
    t0 = time.monotonic()
    with pytest.raises(exc_type) as info:
        fn()
    took = time.monotonic() - t0
    assert took < bound + SLACK, f"{fn} took {took:.2f}s, bound {bound}s"
    return info.value


@pytest.mark.scenario("lock-frozen-sidecar")
def test_frozen_sidecar_loses_the_lease_before_another_holder_gets_it(start_sidecar, unique: str) -> None:
    a = start_sidecar(name="frozen-a")
    b = start_sidecar(name="healthy-b")
    key = f"{unique}/frozen"
    ca = Client(a.addr, timeout=TIMEOUT)
    cb = Client(b.addr, timeout=10.0)
    b_got: dict = {}

    def contend() -> None:
        with cb.lock(key, ttl=2, wait=15, owner="holder-b") as lb:
            b_got["at"] = time.monotonic()
            b_got["token"] = lb.fencing_token

    try:
        handle = ca.lock(f"{key}/handle", ttl=2, owner="handle-a")
        assert handle.acquire(timeout=10)
        with pytest.raises(LeaseLost) as info:
            with ca.lock(key, ttl=2, owner="holder-a", timeout=10) as lease:
                wait_renewal(lease)  # the last confirmation is a renewal, not the grant
                a.pause()
                contender = threading.Thread(target=contend)
                contender.start()
                assert lease.lost.wait(5), "the lease must be lost by the client's clock"
                lost_at = lease.lost_at
                contender.join(20)
                exit_started = time.monotonic()
        exit_took = time.monotonic() - exit_started

        assert lease.lost_reason == "RENEWAL_OVERDUE" and info.value.lost_reason == "RENEWAL_OVERDUE"
        since_renewal = lost_at - lease.confirmed_at
        print(f"frozen sidecar: loss signalled {since_renewal:.3f}s after the last renewal received")
        assert since_renewal <= 2.2, f"lost {since_renewal:.3f}s after the last renewal (TTL 2 s)"
        assert "at" in b_got, "the second client never got the lock through sidecar B"
        assert lost_at < b_got["at"], "the lease must be lost before another client acquires the lock"
        assert b_got["token"] > lease.fencing_token
        assert exit_took < TIMEOUT, f"leaving the block took {exit_took:.2f}s"

        # The explicit handle taken before the freeze: lost by the clock too.
        hl = handle.lease
        assert hl is not None and hl.lost.wait(5) and hl.lost_reason == "RENEWAL_OVERDUE"
        returns_within(0.0, handle.release, LeaseLost)

        # Every helper through the frozen sidecar gives up at its deadline.
        returns_within(1.5 + TIMEOUT, lambda: ca.lock(f"{key}/2", wait=1.5).acquire(), DeadlineExceeded)
        returns_within(1.5 + TIMEOUT, lambda: ca.lock(f"{key}/3", wait=1.5).__enter__(), DeadlineExceeded)
        returns_within(TIMEOUT, lambda: ca.locks.GetLock(lock_pb2.GetLockRequest(key=key)), DeadlineExceeded)
        returns_within(
            0.5 + TIMEOUT,
            lambda: ca.idempotent(f"{key}/op", "fp", lambda: pytest.fail("ran"), wait=0.5, unavailable_retries=0),
            DeadlineExceeded,
        )
        returns_within(TIMEOUT, lambda: ca.breaker("frozen").call(lambda: pytest.fail("ran")), DeadlineExceeded)
        returns_within(TIMEOUT, lambda: ca.execute_call("none", "/"), DeadlineExceeded)
        returns_within(TIMEOUT, lambda: ca.saga(f"{unique}-saga", "frozen").start(), DeadlineExceeded)
        returns_within(TIMEOUT, lambda: ca.lamport_clock("frozen").stamp(), DeadlineExceeded)
        returns_within(TIMEOUT, lambda: ca.subscribe("py-test.frozen", "g", "c"), DeadlineExceeded)
    finally:
        a.resume()
        ca.close()
        cb.close()


def test_release_not_confirmed_when_the_sidecar_freezes_after_the_block(start_sidecar, unique: str) -> None:
    """The block ended while the lease was held; the sidecar freezes before
    the release: the exit waits at most until the lease's local deadline
    and reports the release as not confirmed (not as a lost lease)."""
    a = start_sidecar(name="frozen-at-exit")
    c = Client(a.addr, timeout=5.0)
    try:
        lock = c.lock(f"{unique}/exit", ttl=1, timeout=10)
        t0 = time.monotonic()
        with pytest.raises(ReleaseNotConfirmed) as info:
            with lock as lease:
                a.pause()
        took = time.monotonic() - t0
        assert info.value.fencing_token == lease.fencing_token
        assert took < 1.0 + SLACK, f"the release waited {took:.2f}s past a 1 s lease"
        assert not lease.released

        # The block's own exception wins, with a note.
        a.resume()
        with pytest.raises(ValueError) as verr:
            with c.lock(f"{unique}/exit2", ttl=1, timeout=10):
                a.pause()
                raise ValueError("the block failed")
        notes = getattr(verr.value, "__notes__", [])
        if hasattr(verr.value, "add_note"):
            assert any("not confirmed" in n for n in notes), notes
    finally:
        a.resume()
        c.close()


@pytest.mark.scenario("lock-killed-sidecar")
def test_killed_sidecar_ends_the_lease_and_nothing_hangs(start_sidecar, unique: str) -> None:
    a = start_sidecar(name="killed")
    c = Client(a.addr, timeout=TIMEOUT)
    try:
        handle = c.lock(f"{unique}/handle", ttl=10)
        assert handle.acquire(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(LeaseLost) as info:
            with c.lock(f"{unique}/k", ttl=10, timeout=10) as lease:
                a.kill()
                assert lease.lost.wait(10), "a killed sidecar must end the lease"
        assert info.value.lost_reason in ("STREAM_ENDED", "RENEWAL_OVERDUE")
        assert lease.lost_reason in ("STREAM_ENDED", "RENEWAL_OVERDUE")
        assert time.monotonic() - t0 < 10, "the lease (TTL 10 s) must end before its TTL"
        # The handle: its release cannot be confirmed; said so at once, typed.
        err = returns_within(TIMEOUT, handle.release, ReleaseNotConfirmed)
        assert isinstance(err.cause, SidecarUnreachable)
    finally:
        c.close()
