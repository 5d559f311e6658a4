"""The program install-test.sh runs in a fresh venv where only the built
wheel (and its dependencies from PyPI) is installed: a lock, an idempotent
operation run once under retries, and the ASGI middleware's import without
Starlette (or, with --asgi, a FastAPI app behind it). Prints one line per
check and "install check: OK"; exits non-zero on any failure."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import uuid

import google.protobuf
import grpc

from resilience_sidecar import Client
from resilience_sidecar.aio import AsyncClient


def check_sync(addr: str, run: str) -> None:
    with Client(addr, timeout=10) as client:
        client.wait_ready(timeout=15)
        with client.lock(f"install/{run}/lock", ttl=5, owner="install-check") as lease:
            assert lease.fencing_token > 0
            lease.check()
        print(f"lock: held with fencing token {lease.fencing_token}, released")

        calls = []

        @client.idempotent(key_fn=lambda order: f"install/{run}/charge/{order}")
        def charge(order: str) -> dict:
            calls.append(order)
            return {"order": order, "charge": f"ch-{len(calls)}"}

        results = [charge("42") for _ in range(3)]
        assert len(calls) == 1, calls
        assert results == [{"order": "42", "charge": "ch-1"}] * 3, results
        print(f"idempotent: 3 calls, ran once, result {json.dumps(results[0])}")


async def check_async(addr: str, run: str) -> None:
    async with AsyncClient(addr, timeout=10) as client:
        async with client.lock(f"install/{run}/alock", ttl=5) as lease:
            assert lease.fencing_token > 0
        print("aio lock: held and released")


async def check_asgi(addr: str, run: str) -> None:
    from fastapi import FastAPI

    from resilience_sidecar.asgi import IdempotencyMiddleware

    runs = []
    app = FastAPI()

    @app.post("/orders", status_code=201)
    async def create() -> dict:
        runs.append(1)
        return {"order": len(runs)}

    clients = []

    def make() -> AsyncClient:
        clients.append(AsyncClient(addr))
        return clients[-1]

    app.add_middleware(IdempotencyMiddleware, client=make)

    async def call() -> tuple:
        sent = []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/orders", "raw_path": b"/orders", "query_string": b"", "root_path": "",
            "headers": [(b"idempotency-key", f"install-{run}".encode()), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], dict(start["headers"]), body

    s1, h1, b1 = await call()
    s2, h2, b2 = await call()
    assert (s1, s2) == (201, 201) and b1 == b2 and len(runs) == 1, (s1, s2, b1, b2, runs)
    assert h2.get(b"idempotent-replayed") == b"true" and b"idempotent-replayed" not in h1
    for c in clients:
        await c.close()
    print(f"asgi: FastAPI behind IdempotencyMiddleware ran once, replayed {b2.decode()}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--asgi", action="store_true", help="also run a FastAPI app behind the middleware")
    args = p.parse_args()
    run = uuid.uuid4().hex[:8]
    print(f"python {sys.version.split()[0]}, protobuf {google.protobuf.__version__}, grpcio {grpc.__version__}")
    check_sync(args.addr, run)
    asyncio.run(check_async(args.addr, run))
    import resilience_sidecar.asgi  # noqa: F401  (plain ASGI: imports without Starlette)

    if args.asgi:
        asyncio.run(check_asgi(args.addr, run))
    else:
        assert importlib.util.find_spec("starlette") is None, "starlette is installed without the extra"
        print("asgi: resilience_sidecar.asgi imports without starlette")
    print("install check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
