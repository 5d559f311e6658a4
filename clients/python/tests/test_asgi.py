"""resilience_sidecar.asgi.IdempotencyMiddleware on a Starlette app, driven
in-process through httpx's ASGI transport, against the real sidecar on the
real redis-server (the cases of the middleware's rules, §7). Each test runs
its coroutine with asyncio.run (no plugin)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any, Callable, Dict, List

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from resilience_sidecar.aio import AsyncClient
from resilience_sidecar.asgi import IdempotencyMiddleware, request_fingerprint
from resilience_sidecar.v1 import idempotency_pb2


def run(coro):
    return asyncio.run(coro)


class Orders:
    """A Starlette app whose handlers count their runs."""

    def __init__(self) -> None:
        self.runs: Dict[str, int] = {}
        self.bodies: List[bytes] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail_next = 0
        self.raise_next = 0

        async def create(request: Request) -> Response:
            self.runs["create"] = self.runs.get("create", 0) + 1
            body = await request.body()
            self.bodies.append(body)
            n = self.runs["create"]
            resp = JSONResponse({"order": n, "got": json.loads(body or b"null")}, status_code=201)
            resp.headers["location"] = f"/orders/{n}"
            resp.headers.append("x-tag", "a")
            resp.headers.append("x-tag", "b")
            resp.set_cookie("session", "secret")
            return resp

        async def slow(request: Request) -> Response:
            self.runs["slow"] = self.runs.get("slow", 0) + 1
            self.entered.set()
            await self.gate.wait()
            return JSONResponse({"slow": True})

        async def flaky(request: Request) -> Response:
            self.runs["flaky"] = self.runs.get("flaky", 0) + 1
            if self.fail_next:
                self.fail_next -= 1
                return JSONResponse({"error": "try again"}, status_code=503)
            if self.raise_next:
                self.raise_next -= 1
                raise RuntimeError("handler blew up")
            return JSONResponse({"flaky": self.runs["flaky"]})

        async def read(request: Request) -> Response:
            self.runs["read"] = self.runs.get("read", 0) + 1
            return JSONResponse({"read": self.runs["read"]})

        self.app = Starlette(
            routes=[
                Route("/orders", create, methods=["POST", "GET"]),
                Route("/slow", slow, methods=["POST"]),
                Route("/flaky", flaky, methods=["POST"]),
                Route("/read", read, methods=["GET", "POST"]),
            ]
        )


def http(app: Any) -> httpx.AsyncClient:
    # raise_app_exceptions=False: a handler's exception becomes the 500 a
    # server would send.
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


def wrapped(orders: Orders, client: Any, **options: Any) -> IdempotencyMiddleware:
    return IdempotencyMiddleware(orders.app, client=client, **options)


def problem(r: httpx.Response, status: int, code: str) -> Dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "about:blank" and body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"]
    return body


def new_key() -> str:
    return f"order-{uuid.uuid4().hex}"


def test_first_request_runs_once_and_a_duplicate_is_replayed(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c)) as h:
            key = new_key()
            first = await h.post("/orders?src=web", json={"sku": "A1"}, headers={"Idempotency-Key": key})
            assert first.status_code == 201
            assert "idempotent-replayed" not in first.headers
            again = await h.post("/orders?src=web", json={"sku": "A1"}, headers={"idempotency-key": key})
            assert orders.runs["create"] == 1, "the handler ran for the duplicate"
            assert again.status_code == 201
            assert again.content == first.content
            assert again.headers["idempotent-replayed"] == "true"
            assert again.headers["location"] == first.headers["location"] == "/orders/1"
            assert again.headers["content-type"] == first.headers["content-type"] == "application/json"
            assert again.headers["x-tag"] == "a, b"
            assert "set-cookie" in first.headers and "set-cookie" not in again.headers
            # The body reached the handler unchanged.
            assert orders.bodies == [first.request.content]

    run(main())


def test_a_duplicate_through_a_second_sidecar_on_the_same_redis_is_replayed(sidecar, start_sidecar) -> None:
    other = start_sidecar(name="second")

    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as a, AsyncClient(other.addr) as b:
            key = new_key()
            async with http(wrapped(orders, a)) as ha:
                first = await ha.post("/orders", content=b'{"sku":"B2"}', headers={"Idempotency-Key": key})
            async with http(wrapped(orders, b)) as hb:
                again = await hb.post("/orders", content=b'{"sku":"B2"}', headers={"Idempotency-Key": key})
            assert first.status_code == again.status_code == 201
            assert again.content == first.content
            assert again.headers["idempotent-replayed"] == "true"
            assert orders.runs["create"] == 1

    run(main())


def test_a_concurrent_duplicate_gets_409_with_retry_after(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c, lease_ttl=20)) as h:
            key = new_key()
            first = asyncio.create_task(h.post("/slow", content=b"x", headers={"Idempotency-Key": key}))
            await asyncio.wait_for(orders.entered.wait(), 10)
            dup = await h.post("/slow", content=b"x", headers={"Idempotency-Key": key})
            body = problem(dup, 409, "IDEMPOTENCY_KEY_IN_USE")
            assert int(dup.headers["retry-after"]) >= 1
            assert "retry" in body["detail"]
            orders.gate.set()
            done = await first
            assert done.status_code == 200 and orders.runs["slow"] == 1
            after = await h.post("/slow", content=b"x", headers={"Idempotency-Key": key})
            assert after.headers["idempotent-replayed"] == "true" and orders.runs["slow"] == 1

    run(main())


def test_the_same_key_with_another_body_path_or_method_is_422(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c)) as h:
            key = new_key()
            assert (await h.post("/orders", json={"sku": "A"}, headers={"Idempotency-Key": key})).status_code == 201
            problem(await h.post("/orders", json={"sku": "B"}, headers={"Idempotency-Key": key}), 422, "IDEMPOTENCY_KEY_REUSED")
            problem(await h.post("/orders?x=1", json={"sku": "A"}, headers={"Idempotency-Key": key}), 422, "IDEMPOTENCY_KEY_REUSED")
            problem(await h.put("/orders", json={"sku": "A"}, headers={"Idempotency-Key": key}), 422, "IDEMPOTENCY_KEY_REUSED")
            assert orders.runs["create"] == 1

    run(main())


def test_a_5xx_response_is_not_stored_and_a_retry_runs_again(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        orders.fail_next = 1
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c)) as h:
            key = new_key()
            r1 = await h.post("/flaky", content=b"{}", headers={"Idempotency-Key": key})
            assert r1.status_code == 503 and r1.json() == {"error": "try again"}, "the handler's own 5xx goes out"
            assert "idempotent-replayed" not in r1.headers
            r2 = await h.post("/flaky", content=b"{}", headers={"Idempotency-Key": key})
            assert r2.status_code == 200 and r2.json() == {"flaky": 2}
            r3 = await h.post("/flaky", content=b"{}", headers={"Idempotency-Key": key})
            assert r3.headers["idempotent-replayed"] == "true" and r3.json() == {"flaky": 2}
            assert orders.runs["flaky"] == 2

    run(main())


def test_a_handler_that_raises_releases_the_key(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        orders.raise_next = 1
        async with AsyncClient(sidecar.addr) as c:
            mw = wrapped(orders, c)
            key = new_key()
            with pytest.raises(RuntimeError, match="handler blew up"):
                # Straight through ASGI: the exception reaches the server.
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://test") as raw:
                    await raw.post("/flaky", content=b"{}", headers={"Idempotency-Key": key})
            async with http(mw) as h:
                r2 = await h.post("/flaky", content=b"{}", headers={"Idempotency-Key": key})
                assert r2.status_code == 200 and r2.json() == {"flaky": 2}
            assert orders.runs["flaky"] == 2

    run(main())


def test_requests_without_the_header_and_uncovered_methods_pass_through(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c)) as h:
            for _ in range(2):
                assert (await h.post("/orders", json={"sku": "A"})).status_code == 201
            assert orders.runs["create"] == 2
            key = new_key()
            for _ in range(2):
                r = await h.get("/read", headers={"Idempotency-Key": key})
                assert r.status_code == 200 and "idempotent-replayed" not in r.headers
            assert orders.runs["read"] == 2

        # methods= chooses what is covered.
        orders2 = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders2, c, methods=["GET"])) as h:
            key = new_key()
            await h.get("/read", headers={"Idempotency-Key": key})
            again = await h.get("/read", headers={"Idempotency-Key": key})
            assert again.headers["idempotent-replayed"] == "true" and orders2.runs["read"] == 1
            await h.post("/read", headers={"Idempotency-Key": key})
            await h.post("/read", headers={"Idempotency-Key": key})
            assert orders2.runs["read"] == 3

    run(main())


def test_required_answers_a_missing_header_with_400(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c, required=True)) as h:
            body = problem(await h.post("/orders", json={}), 400, "IDEMPOTENCY_KEY_MISSING")
            assert "Idempotency-Key" in body["detail"]
            assert (await h.get("/read")).status_code == 200
            assert "create" not in orders.runs

    run(main())


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there", "new\nline"[:3] + "\x7f"])
def test_an_invalid_key_is_400_naming_the_header(sidecar, key: str) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c)) as h:
            r = await h.post("/orders", json={}, headers=[(b"Idempotency-Key", key.encode("latin-1"))])
            body = problem(r, 400, "IDEMPOTENCY_KEY_INVALID")
            assert "Idempotency-Key" in body["detail"]
            assert "create" not in orders.runs

    run(main())


def test_the_longest_valid_key_is_accepted(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c)) as h:
            key = (" ~" + uuid.uuid4().hex) * 10
            key = (key * 3)[:255]
            r1 = await h.post("/orders", json={}, headers={"Idempotency-Key": key})
            r2 = await h.post("/orders", json={}, headers={"Idempotency-Key": key})
            assert r1.status_code == 201 and r2.headers["idempotent-replayed"] == "true"

    run(main())


def test_a_body_over_max_body_is_413_and_the_handler_does_not_run(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sidecar.addr) as c, http(wrapped(orders, c, max_body=16)) as h:
            problem(await h.post("/orders", content=b"x" * 17, headers={"Idempotency-Key": new_key()}), 413,
                    "IDEMPOTENCY_BODY_TOO_LARGE")

            async def chunks():  # no Content-Length: counted while read
                for _ in range(3):
                    yield b"x" * 8

            problem(await h.post("/orders", content=chunks(), headers={"Idempotency-Key": new_key()}), 413,
                    "IDEMPOTENCY_BODY_TOO_LARGE")
            ok = await h.post("/orders", content=b'"0123456789abcd"', headers={"Idempotency-Key": new_key()})
            assert ok.status_code == 201 and ok.json()["got"] == "0123456789abcd"
            assert orders.runs["create"] == 1

    run(main())


def test_a_stopped_sidecar_is_503_and_the_handler_does_not_run(start_sidecar) -> None:
    sc = start_sidecar(name="doomed")

    async def main() -> None:
        orders = Orders()
        async with AsyncClient(sc.addr, timeout=5) as c, http(wrapped(orders, c)) as h:
            assert (await h.post("/orders", json={}, headers={"Idempotency-Key": new_key()})).status_code == 201
            sc.stop()
            r = await h.post("/orders", json={}, headers={"Idempotency-Key": new_key()})
            problem(r, 503, "SIDECAR_UNAVAILABLE")
            assert r.headers["retry-after"] == "1"
            assert orders.runs["create"] == 1

    run(main())


def test_scope_and_key_fn_choose_the_stored_key(sidecar) -> None:
    async def main() -> None:
        orders = Orders()
        key = new_key()
        async with AsyncClient(sidecar.addr) as c:
            # Two tenants with the same Idempotency-Key do not meet.
            tenant_mw = wrapped(orders, c, key_fn=lambda s, k: f"http:{dict(s['headers'])[b'x-tenant'].decode()}:{k}")
            async with http(tenant_mw) as h:
                for tenant in ("t1", "t2", "t1"):
                    await h.post("/orders", json={}, headers={"Idempotency-Key": key, "X-Tenant": tenant})
            assert orders.runs["create"] == 2
            # The default store key is http:<key>; another scope is another key.
            async with http(wrapped(orders, c, scope="billing")) as h:
                r = await h.post("/orders", json={}, headers={"Idempotency-Key": key})
                assert "idempotent-replayed" not in r.headers
            assert orders.runs["create"] == 3
            for stored in (f"billing:{key}", f"http:t1:{key}", f"http:t2:{key}"):
                resp = await c.idempotency.GetIdempotency(idempotency_pb2.GetIdempotencyRequest(key=stored))
                assert resp.state == resp.STATE_COMPLETED, stored
            absent = await c.idempotency.GetIdempotency(idempotency_pb2.GetIdempotencyRequest(key=f"http:{key}"))
            assert absent.state == absent.STATE_ABSENT

    run(main())


def test_a_client_factory_is_called_once_in_the_serving_loop(sidecar) -> None:
    made: List[AsyncClient] = []

    def factory() -> AsyncClient:
        asyncio.get_running_loop()  # raises outside a running loop
        made.append(AsyncClient(sidecar.addr))
        return made[-1]

    orders = Orders()
    mw = wrapped(orders, factory)  # outside any loop, as at import time

    async def main() -> None:
        async with http(mw) as h:
            key = new_key()
            rs = await asyncio.gather(*(h.post("/orders", json={}, headers={"Idempotency-Key": f"{key}-{i}"}) for i in range(3)))
            assert [r.status_code for r in rs] == [201, 201, 201]
        assert len(made) == 1
        await made[0].close()

    run(main())


def test_fingerprint_is_sha256_of_method_path_query_and_body() -> None:
    scope = {"method": "post", "raw_path": b"/a%20b", "path": "/a b", "query_string": b"x=1"}
    want = hashlib.sha256(b"POST\n/a%20b?x=1\n{}").hexdigest()
    assert request_fingerprint(scope, b"{}") == want
    assert request_fingerprint({"method": "PUT", "path": "/p", "query_string": b""}, b"") == hashlib.sha256(b"PUT\n/p\n").hexdigest()


def test_bad_options_are_refused() -> None:
    app: Callable[..., Any] = Orders().app
    with pytest.raises(TypeError, match="client"):
        IdempotencyMiddleware(app, client=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncClient"):
        IdempotencyMiddleware(app, client="127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_body"):
        IdempotencyMiddleware(app, client=lambda: None, max_body=-1)  # type: ignore[arg-type,return-value]
