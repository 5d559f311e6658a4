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
    with client.lock(key, ttl=0.5, owner="slow") as lease:
        first_expiry = lease.expire_time
        time.sleep(1.6)  # more than three TTLs: only the session's renewals keep it
        lease.check()
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


def test_two_processes_contend_without_lost_updates(sidecar, unique: str, tmp_path: Path) -> None:
    """Two client processes each do N read-modify-write rounds on one file
    under the same lock; the file refuses any fencing token not above the
    last one it saw. Without mutual exclusion updates get lost."""
    rounds = 20
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"counter": 0, "fence": 0, "history": [], "refused": []}))
    env = {**os.environ, "SIDECAR_ADDR": sidecar.addr}
    key = f"{unique}/shared-file"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "lock_worker.py"), key, str(state), str(rounds), name, "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in ("worker-a", "worker-b")
    ]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append(out)
        assert p.returncode == 0, f"worker failed:\n{out}"
    final = json.loads(state.read_text())
    assert final["refused"] == [], f"stale tokens reached the resource: {final['refused']}"
    assert final["counter"] == 2 * rounds, f"lost updates: {final['counter']} of {2 * rounds}\n{outputs}"
    tokens = [t for _, t in final["history"]]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), "fencing tokens must strictly increase"
    assert {name for name, _ in final["history"]} == {"worker-a", "worker-b"}
