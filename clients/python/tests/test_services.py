"""Every service of the sidecar is reachable from Client."""

from __future__ import annotations

import uuid

from resilience_sidecar import Client
from resilience_sidecar.v1 import saga_pb2


def test_saga_stub_start_and_get(client: Client) -> None:
    saga_id = f"py-{uuid.uuid4().hex[:12]}"
    started = client.sagas.StartSaga(saga_pb2.StartSagaRequest(saga_id=saga_id, name="checkout"))
    assert started.saga.saga_id == saga_id
    got = client.sagas.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id))
    assert got.saga.name == "checkout"
    assert got.saga.state == saga_pb2.SAGA_STATE_RUNNING
