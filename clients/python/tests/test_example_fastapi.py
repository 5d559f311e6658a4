"""examples/python/fastapi_app.py run as a user would (a real uvicorn process
on a free port) against the real sidecar, driven over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import httpx
import pytest

from harness import REPO_ROOT, free_port
from resilience_sidecar.v1 import idempotency_pb2

APP = REPO_ROOT / "examples" / "python" / "fastapi_app.py"


@pytest.fixture
def payments(sidecar, tmp_path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "uvicorn.log"
    env = {**os.environ, "SIDECAR_ADDR": sidecar.addr}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(APP), "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"fastapi_app.py exited with {proc.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"fastapi_app.py did not listen within 30s:\n{log.read_text()}")
                time.sleep(0.05)  # real time: uvicorn starts up
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit -15).
    text = log.read_text()
    assert proc.returncode in (0, -15) and "Traceback" not in text, f"fastapi_app.py did not stop cleanly ({proc.returncode}):\n{text}"


def test_fastapi_example_charges_once_per_idempotency_key(payments: str, client, unique: str) -> None:
    key = unique.replace("/", "-")
    with httpx.Client(base_url=payments, timeout=30) as h:
        order = {"order": "42", "amount": 1999}
        first = h.post("/payments", json=order, headers={"Idempotency-Key": key})
        assert first.status_code == 201, first.text
        assert first.json()["charge_id"] == "ch_1"
        assert "idempotent-replayed" not in first.headers

        again = h.post("/payments", json=order, headers={"Idempotency-Key": key})
        assert again.status_code == 201
        assert again.content == first.content
        assert again.headers["location"] == "/payments/ch_1"
        assert again.headers["idempotent-replayed"] == "true"

        reused = h.post("/payments", json={"order": "42", "amount": 1}, headers={"Idempotency-Key": key})
        assert reused.status_code == 422
        assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"

        # Without a key the endpoint is not guarded: it charges each time.
        assert h.post("/payments", json={"order": "43", "amount": 5}).json()["charge_id"] == "ch_2"

        # A retry while the first request still runs: 409 with Retry-After.
        slow_key = f"{key}-slow"
        slow_order = {"order": "44", "amount": 7, "delay": 2}
        result = {}

        def first_request() -> None:
            with httpx.Client(base_url=payments, timeout=30) as h2:
                result["r"] = h2.post("/payments", json=slow_order, headers={"Idempotency-Key": slow_key})

        t = threading.Thread(target=first_request)
        t.start()
        deadline = time.monotonic() + 10
        while client.idempotency.GetIdempotency(
            idempotency_pb2.GetIdempotencyRequest(key=f"http:{slow_key}")
        ).state != idempotency_pb2.GetIdempotencyResponse.STATE_IN_PROGRESS:
            assert time.monotonic() < deadline, "the first request never took the key"
            time.sleep(0.02)  # real time: the first request has to reach the sidecar
        busy = h.post("/payments", json=slow_order, headers={"Idempotency-Key": slow_key})
        t.join(30)
        assert busy.status_code == 409, busy.text
        assert busy.json()["code"] == "IDEMPOTENCY_KEY_IN_USE" and int(busy.headers["retry-after"]) >= 1
        assert result["r"].status_code == 201 and result["r"].json()["charge_id"] == "ch_3"

        ledger = h.get("/ledger").json()
        assert ledger["charges"] == 3, ledger
