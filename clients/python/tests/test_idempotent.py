"""Client.idempotent against the real sidecar: one run per key, stored results
for duplicates, release on failure."""

from __future__ import annotations

import threading
import time

import pytest
from google.protobuf.duration_pb2 import Duration

from resilience_sidecar import (
    Client,
    IdempotencyKeyMismatch,
    Result,
    StillInProgress,
    current_execution,
    fingerprint,
)
from resilience_sidecar.v1 import idempotency_pb2


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self._mu = threading.Lock()

    def bump(self) -> int:
        with self._mu:
            self.n += 1
            return self.n


def test_duplicates_get_the_stored_result_without_running_again(client: Client, unique: str) -> None:
    runs = Counter()
    key, fp = f"{unique}/charge", fingerprint(b'{"amount":4200}')

    def charge() -> dict:
        return {"charge_id": f"ch_{runs.bump()}", "amount": 4200}

    results = [client.idempotent(key, fp, charge) for _ in range(3)]
    assert runs.n == 1
    assert results == [{"charge_id": "ch_1", "amount": 4200}] * 3
    state = client.idempotency.GetIdempotency(idempotency_pb2.GetIdempotencyRequest(key=key, fingerprint=fp))
    assert state.state == idempotency_pb2.GetIdempotencyResponse.STATE_COMPLETED and state.fingerprint_match


def test_concurrent_duplicates_wait_for_the_one_that_runs(client: Client, unique: str) -> None:
    runs = Counter()
    key = f"{unique}/slow"

    def slow() -> dict:
        runs.bump()
        time.sleep(0.5)
        return {"ok": True}

    results: list = []
    errors: list = []

    def call() -> None:
        try:
            results.append(client.idempotent(key, "fp", slow))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert runs.n == 1
    assert results == [{"ok": True}] * 5


@pytest.mark.scenario("idempotent-run-once-stored-result")
def test_two_concurrent_runs_on_two_connections_run_once(sidecar, client: Client, unique: str) -> None:
    """The second run starts while the first is running (its own connection):
    it waits and gets the first run's stored result without running."""
    key = f"{unique}/two-runs"
    runs = Counter()
    first_running, second_started = threading.Event(), threading.Event()

    def op(who: str) -> dict:
        runs.bump()
        if who == "first":
            first_running.set()
            assert second_started.wait(10)
            time.sleep(0.3)  # real time: the second run is waiting on the sidecar meanwhile
        return {"ran_by": who}

    other = Client(sidecar.addr, timeout=10.0)
    results: dict = {}
    try:
        t = threading.Thread(target=lambda: results.__setitem__("first", client.idempotent(key, "fp", lambda: op("first"))))
        t.start()
        assert first_running.wait(10)
        second_started.set()
        results["second"] = other.idempotent(key, "fp", lambda: op("second"))
        t.join(20)
    finally:
        other.close()
    assert runs.n == 1
    assert results == {"first": {"ran_by": "first"}, "second": {"ran_by": "first"}}
    state = client.idempotency.GetIdempotency(idempotency_pb2.GetIdempotencyRequest(key=key, fingerprint="fp"))
    assert state.state == idempotency_pb2.GetIdempotencyResponse.STATE_COMPLETED


def test_failure_releases_the_key_so_a_retry_runs(client: Client, unique: str) -> None:
    runs = Counter()
    key = f"{unique}/flaky"

    def flaky() -> str:
        if runs.bump() == 1:
            raise ConnectionError("provider timed out")
        return "done"

    with pytest.raises(ConnectionError):
        client.idempotent(key, "fp", flaky)
    assert client.idempotent(key, "fp", flaky) == "done"
    assert client.idempotent(key, "fp", flaky) == "done"
    assert runs.n == 2


def test_key_reused_for_another_request_is_a_mismatch(client: Client, unique: str) -> None:
    key = f"{unique}/reused"
    client.idempotent(key, fingerprint("request A"), lambda: 1)
    with pytest.raises(IdempotencyKeyMismatch) as info:
        client.idempotent(key, fingerprint("request B"), lambda: pytest.fail("ran a mismatched request"))
    assert info.value.reason == "IDEMPOTENCY_KEY_MISMATCH"


def test_decorator_with_key_fn_and_argument_fingerprint(client: Client, unique: str) -> None:
    runs = Counter()

    @client.idempotent(key_fn=lambda order, amount: f"{unique}/order/{order}")
    def charge(order: str, amount: int) -> dict:
        runs.bump()
        return {"order": order, "amount": amount}

    assert charge("o-1", 100) == {"order": "o-1", "amount": 100}
    assert charge("o-1", 100) == {"order": "o-1", "amount": 100}
    assert charge("o-2", 5) == {"order": "o-2", "amount": 5}
    assert runs.n == 2
    with pytest.raises(IdempotencyKeyMismatch):
        charge("o-1", 999)  # same key, different request


def test_result_objects_are_stored_as_is(client: Client, unique: str) -> None:
    key = f"{unique}/raw"
    made = Result(b"\x00\x01body", {"status": "201", "content-type": "application/octet-stream"})
    first = client.idempotent(key, "", lambda: made)
    again = client.idempotent(key, "", lambda: pytest.fail("ran twice"))
    assert first == again
    assert again.data == b"\x00\x01body" and dict(again.metadata) == {"status": "201", "content-type": "application/octet-stream"}


def test_current_execution_and_checkpoint(client: Client, unique: str) -> None:
    key = f"{unique}/phases"
    seen: dict = {}

    def op() -> str:
        ex = current_execution()
        assert ex is not None
        seen["attempt"] = ex.attempt
        seen["recovery_point"] = ex.recovery_point
        ex.checkpoint("charged", b"ch_9")
        return "ok"

    assert current_execution() is None
    assert client.idempotent(key, "fp", op) == "ok"
    assert seen == {"attempt": 1, "recovery_point": ""}


def test_takeover_after_the_executor_died_resumes_from_its_checkpoint(client: Client, unique: str) -> None:
    """A STARTED caller that vanishes without completing: after its lease
    expires the next caller takes over with attempt 2 and the checkpoint."""
    key = f"{unique}/takeover"
    started = client.idempotency.CheckOrRecordIdempotency(
        idempotency_pb2.CheckOrRecordIdempotencyRequest(key=key, fingerprint="fp", lease_ttl=Duration(seconds=1))
    )
    assert started.outcome == idempotency_pb2.CheckOrRecordIdempotencyResponse.OUTCOME_STARTED
    client.idempotency.CheckpointIdempotency(
        idempotency_pb2.CheckpointIdempotencyRequest(key=key, lease_id=started.lease_id, recovery_point="charged", data=b"ch_7")
    )

    def resume() -> dict:
        ex = current_execution()
        assert ex is not None
        return {"attempt": ex.attempt, "from": ex.recovery_point, "data": ex.recovery_data.decode()}

    assert client.idempotent(key, "fp", resume, max_wait=20) == {"attempt": 2, "from": "charged", "data": "ch_7"}


def test_still_in_progress_after_max_wait(client: Client, unique: str) -> None:
    key = f"{unique}/long"
    running, finish = threading.Event(), threading.Event()

    def long_op() -> str:
        running.set()
        finish.wait(20)
        return "late"

    t = threading.Thread(target=lambda: client.idempotent(key, "fp", long_op))
    t.start()
    try:
        assert running.wait(10)
        with pytest.raises(StillInProgress) as info:
            client.idempotent(key, "fp", lambda: pytest.fail("ran while in progress"), wait=0.1, max_wait=0.3)
        assert info.value.key == key
    finally:
        finish.set()
        t.join(20)
    assert client.idempotent(key, "fp", lambda: pytest.fail("ran twice")) == "late"


def test_misuse_is_a_type_error(client: Client) -> None:
    with pytest.raises(TypeError):
        client.idempotent(lambda: 1)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        client.idempotent()
    with pytest.raises(TypeError):
        client.idempotent("k", "fp", lambda: object())  # not JSON: refused, key released
