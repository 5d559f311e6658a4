"""Client.saga: steps recorded write-ahead, compensations run by the real
sidecar newest first as HTTP calls to a real upstream."""

from __future__ import annotations

import uuid

import pytest

from conftest import Rig
from resilience_sidecar import Client, SagaNotFound, SagaStateConflict, compensation
from resilience_sidecar.v1 import saga_pb2


def saga_id() -> str:
    return f"py-saga-{uuid.uuid4().hex[:12]}"


def undo(n: int, sid: str) -> saga_pb2.Compensation:
    return compensation("test", f"/undo/{n}", method="POST", body=f"undo {n} of {sid}")


@pytest.mark.scenario("saga-compensates-in-reverse")
def test_third_step_fails_and_the_steps_are_compensated_newest_first(rig: Rig) -> None:
    sid = saga_id()
    done: list = []

    def do(n: int) -> int:
        if n == 3:
            raise RuntimeError("step 3 failed")
        done.append(n)
        return n

    with pytest.raises(RuntimeError, match="step 3 failed"):
        with rig.client.saga(sid, "place-order", timeout=60) as saga:
            assert saga.step("reserve", do, 1, compensation=undo(1, sid)) == 1
            assert saga.step("charge", do, 2, compensation=undo(2, sid)) == 2
            saga.step("ship", do, 3, compensation=undo(3, sid))
    assert done == [1, 2]
    assert saga.steps == [("reserve", 1), ("charge", 2), ("ship", 3)]

    final = saga.wait(30)
    assert final.state == saga_pb2.SAGA_STATE_COMPENSATED
    assert "RuntimeError: step 3 failed" in final.reason
    calls = rig.upstream.wait_for(3, path_prefix="/undo/")
    # Step 3 was recorded before it ran (its outcome may be unknown), so it
    # is compensated too: then 2, then 1.
    assert [c.path for c in calls] == ["/undo/3", "/undo/2", "/undo/1"]
    assert [c.headers["idempotency-key"] for c in calls] == [f"{sid}:ship", f"{sid}:charge", f"{sid}:reserve"]
    assert calls[0].body == f"undo 3 of {sid}".encode()
    assert all(s.status == saga_pb2.COMPENSATION_STATUS_SUCCEEDED for s in final.steps)


def test_a_failure_after_two_steps_compensates_step_2_then_1(rig: Rig) -> None:
    sid = saga_id()
    with pytest.raises(ValueError):
        with rig.client.saga(sid, "place-order") as saga:
            saga.add_compensation("reserve", upstream="test", path="/undo/a")
            saga.add_compensation("charge", undo(2, sid))
            raise ValueError("the app failed before step 3")
    assert saga.wait(30).state == saga_pb2.SAGA_STATE_COMPENSATED
    calls = rig.upstream.wait_for(2, path_prefix="/undo/")
    assert [c.path for c in calls] == ["/undo/2", "/undo/a"]


def test_a_saga_that_returns_is_completed_and_nothing_is_compensated(rig: Rig) -> None:
    sid = saga_id()
    with rig.client.saga(sid, "place-order", metadata={"order": "42"}) as saga:
        saga.add_compensation("reserve", undo(1, sid))
        assert saga.state == "running"
    got = saga.get()
    assert got.state == saga_pb2.SAGA_STATE_COMPLETED and got.metadata["order"] == "42"
    assert saga.state == "completed"
    assert not rig.upstream.requests
    # The saga is over: a later step is refused, so it must not be done.
    with pytest.raises(SagaStateConflict) as info:
        saga.add_compensation("late", undo(9, sid))
    assert info.value.metadata.get("state")


def test_compensate_waits_for_the_end(rig: Rig) -> None:
    sid = saga_id()
    saga = rig.client.saga(sid, "manual").start()
    saga.add_compensation("one", undo(1, sid))
    final = saga.compensate("operator said so", wait=30)
    assert final.state == saga_pb2.SAGA_STATE_COMPENSATED and final.reason == "operator said so"


def test_unknown_saga_and_misuse(client: Client) -> None:
    with pytest.raises(SagaNotFound):
        client.saga(saga_id(), "x").get()
    saga = client.saga(saga_id(), "x")
    with pytest.raises(TypeError):
        saga.add_compensation("step")  # neither a Compensation nor upstream=
    with pytest.raises(TypeError):
        saga.step("step", lambda: None)  # no compensation
