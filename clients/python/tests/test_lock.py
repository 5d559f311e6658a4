"""Client.lock over real HoldLock sessions on the real sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from resilience_sidecar import Client, InvalidArgument, LeaseLost, NotAcquired
from resilience_sidecar.v1 import lock_pb2

HERE = Path(__file__).resolve().parent


def get_lock(client: Client, key: str) -> lock_pb2.GetLockResponse:
    return client.locks.GetLock(lock_pb2.GetLockRequest(key=key))


def test_lock_holds_blocks_others_and_releases(client: Client, unique: str) -> None:
    key = f"{unique}/orders/42"
    with client.lock(key, ttl=5, owner="worker-a") as lease:
        assert lease.key == key and lease.owner == "worker-a"
        assert lease.fencing_token > 0 and lease.expire_time is not None
        assert not lease.lost.is_set()
        lease.check()
        seen = get_lock(client, key)
        assert seen.held and seen.holder.owner == "worker-a"
        assert seen.holder.fencing_token == lease.fencing_token
        with pytest.raises(NotAcquired) as info:
            with client.lock(key, wait=0.2, owner="worker-b"):
                pytest.fail("a held lock was granted twice")
        assert info.value.holder == "worker-a"
        assert info.value.fencing_token == lease.fencing_token
        first_token = lease.fencing_token
    assert not get_lock(client, key).held, "leaving the block must release the lock"
    with client.lock(key, owner="worker-b") as lease2:
        assert lease2.fencing_token > first_token


def test_lock_wait_is_woken_by_release(client: Client, unique: str) -> None:
    key = f"{unique}/jobs"
    holding = threading.Event()
    released_at: list[float] = []

    def holder() -> None:
        with client.lock(key, ttl=5, owner="holder"):
            holding.set()
            time.sleep(0.3)
            released_at.append(time.monotonic())

    t = threading.Thread(target=holder)
    t.start()
    assert holding.wait(10)
    with client.lock(key, ttl=5, wait=20, owner="waiter") as lease:
        acquired_at = time.monotonic()
        assert lease.owner == "waiter"
    t.join(10)
    assert released_at and acquired_at >= released_at[0]


def test_renewal_keeps_a_short_ttl_lease_alive(client: Client, unique: str) -> None:
    key = f"{unique}/renewed"
    with client.lock(key, ttl=1, owner="slow") as lease:
        first_expiry, first_confirmed = lease.expire_time, lease.confirmed_at
        time.sleep(3.2)  # real time: more than three TTLs, only the session's renewals keep it
        lease.check()  # the local clock saw the renewals too
        assert lease.confirmed_at > first_confirmed and lease.deadline > time.monotonic()
        assert lease.expire_time is not None and first_expiry is not None and lease.expire_time > first_expiry
        assert get_lock(client, key).holder.fencing_token == lease.fencing_token


def test_max_hold_sets_lost_and_raises_lease_lost(client: Client, unique: str) -> None:
    key = f"{unique}/max-hold"
    with pytest.raises(LeaseLost) as info:
        with client.lock(key, ttl=5, max_hold=0.3, owner="greedy") as lease:
            assert lease.lost.wait(10), "the sidecar should end the session after max_hold"
            assert lease.lost_reason == "MAX_HOLD"
            with pytest.raises(LeaseLost):
                lease.check()
            # The block goes on as if it had not noticed: exit must still raise.
    assert info.value.reason == "LEASE_LOST"
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.lost_reason == "MAX_HOLD"
    assert not get_lock(client, key).held


def test_lease_lost_wins_over_the_blocks_exception(client: Client, unique: str) -> None:
    key = f"{unique}/max-hold-raise"
    with pytest.raises(LeaseLost) as info:
        with client.lock(key, max_hold=0.2) as lease:
            assert lease.lost.wait(10)
            raise ValueError("the block failed too")
    assert isinstance(info.value.__context__, ValueError)


def test_lock_invalid_arguments(client: Client, unique: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        with client.lock("", ttl=0.001):
            pytest.fail("an empty key was granted")
    # HoldLock names the fields by their path in the request.
    assert {"acquire.key", "acquire.ttl"} <= set(info.value.violations)


def test_lock_released_when_holder_process_dies(sidecar, client: Client, unique: str) -> None:
    """The session ends with the process; the sidecar frees the lock long
    before its 60 s TTL would."""
    key = f"{unique}/crash"
    code = (
        "import os, sys\n"
        "from resilience_sidecar import Client\n"
        f"with Client().lock({key!r}, ttl=60, owner='doomed'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    os._exit(3)\n"
    )
    env = {**os.environ, "SIDECAR_ADDR": sidecar.addr}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert get_lock(client, key).holder.owner == "doomed"
        proc.kill()
        proc.wait(10)
        with client.lock(key, wait=20, owner="survivor") as lease:
            assert lease.owner == "survivor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.scenario("lock-contention-fencing")
def test_processes_contend_without_overlap_and_with_increasing_tokens(sidecar, unique: str, tmp_path: Path) -> None:
    """Three client processes (two with the `with` form, one with the
    explicit handle) each do N read-modify-write rounds on one file under
    the same lock; the file refuses any fencing token not above the last one
    it saw. Without mutual exclusion updates get lost or sections overlap."""
    rounds = 15
    workers = [("worker-a", "with"), ("worker-b", "with"), ("worker-c", "handle")]
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"counter": 0, "fence": 0, "history": [], "refused": []}))
    env = {**os.environ, "SIDECAR_ADDR": sidecar.addr}
    key = f"{unique}/shared-file"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "lock_worker.py"), key, str(state), str(rounds), name, str(len(workers)), mode],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name, mode in workers
    ]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append(out)
        assert p.returncode == 0, f"worker failed:\n{out}"
    final = json.loads(state.read_text())
    assert final["refused"] == [], f"stale tokens reached the resource: {final['refused']}"
    assert final["counter"] == len(workers) * rounds, f"lost updates: {final['counter']}\n{outputs}"
    tokens = [t for _, t, _, _ in final["history"]]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), "fencing tokens must strictly increase"
    intervals = [(entered, left) for _, _, entered, left in final["history"]]
    for (_, left), (entered, _) in zip(intervals, intervals[1:]):
        assert left <= entered, "two critical sections overlapped"
    assert {name for name, _, _, _ in final["history"]} == {name for name, _ in workers}


@pytest.mark.scenario("lock-explicit-handle")
def test_explicit_handle_acquire_extend_release(client: Client, unique: str) -> None:
    key = f"{unique}/handle"
    lock = client.lock(key, ttl=2, owner="handle")
    assert not lock.locked() and not lock.owned() and lock.fencing_token is None
    assert lock.acquire()
    token = lock.fencing_token
    assert token is not None and token > 0
    assert lock.locked() and lock.owned()
    held = get_lock(client, key)
    assert held.holder.owner == "handle" and held.holder.fencing_token == token

    other = client.lock(key, wait=0.2, owner="other")
    assert not other.acquire()
    assert other.not_acquired is not None and other.not_acquired.fencing_token == token
    assert not other.owned() and other.locked()

    lease = lock.lease
    assert lease is not None
    deadline_before = lease.deadline
    lock.extend(5)
    assert lease.ttl == 5 and lease.deadline > deadline_before
    time.sleep(2.5)  # real time: past the 2 s TTL of the grant, only the extension keeps the lock
    assert lock.owned() and get_lock(client, key).holder.fencing_token == token

    lock.release()
    assert lease.released and not lease.lost.is_set()
    assert not lock.locked() and not lock.owned() and lock.fencing_token is None
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire()  # a Lock is reusable; every grant has a new token
    assert lock.fencing_token is not None and lock.fencing_token > token
    lock.release()


def test_handle_not_extended_is_lost_by_the_local_clock(client: Client, unique: str) -> None:
    key = f"{unique}/unextended"
    lock = client.lock(key, ttl=0.5)
    assert lock.acquire()
    lease = lock.lease
    assert lease is not None
    assert lease.lost.wait(5), "the local deadline (ttl - 100 ms) should mark the lease lost"
    assert lease.lost_reason == "RENEWAL_OVERDUE"
    # The deadline the client kept is before the TTL ends, and the loss was
    # not signalled before it (when it was signalled depends on the load).
    assert lease.deadline - lease.confirmed_at == pytest.approx(0.4)
    assert lease.lost_at is not None and lease.lost_at >= lease.deadline
    assert not lock.owned()
    with pytest.raises(LeaseLost) as info:
        lock.extend()
    assert info.value.lost_reason == "RENEWAL_OVERDUE"
    with pytest.raises(LeaseLost):
        lock.release()


def test_with_and_handle_do_not_mix(client: Client, unique: str) -> None:
    lock = client.lock(f"{unique}/mix")
    with lock as lease:
        assert lock.lease is lease and lock.fencing_token == lease.fencing_token
        with pytest.raises(RuntimeError):
            lock.acquire()
        with pytest.raises(RuntimeError):
            lock.release()
    assert lock.lease is None
    with lock:  # entered again after exit: a new session
        pass


def test_lost_callback_runs_once(client: Client, unique: str) -> None:
    seen: list = []
    with pytest.raises(LeaseLost):
        with client.lock(f"{unique}/cb", max_hold=0.3) as lease:
            lease.add_lost_callback(lambda l: seen.append(l.lost_reason))
            assert lease.lost.wait(10)
    lease.add_lost_callback(lambda l: seen.append("late"))
    assert seen == ["MAX_HOLD", "late"]
