"""ASGI middleware that honours an ``Idempotency-Key`` header (Stripe's API,
AWS Powertools' ``@idempotent``) for FastAPI, Starlette or any ASGI app.

    from fastapi import FastAPI
    from resilience_sidecar.asgi import IdempotencyMiddleware

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, client=lambda: AsyncClient())

A covered request (POST, PUT, PATCH, DELETE by default) that carries the
header is run at most once per key: the first one runs the handler and its
response (status, headers, body) is stored by the sidecar; a retry with the
same key and the same request gets that response again, with
``Idempotent-Replayed: true``, without running the handler. The rules
(``clients/python/README.md``, "Idempotency-Key middleware") are the same in
every language of the project:

- 409 ``IDEMPOTENCY_KEY_IN_USE`` (with ``Retry-After``) while another request
  with the key runs; 422 ``IDEMPOTENCY_KEY_REUSED`` for the key sent with
  another request (method, path with query, body); 400 for a missing
  (``required=True``) or invalid key; 413 for a body over ``max_body``; 503
  ``SIDECAR_UNAVAILABLE`` (``Retry-After: 1``) when the sidecar does not
  answer, and then the handler does not run.
- A response with status 500 or more, or a handler that raises, is not
  stored: the key is released and a retry runs the handler again.
- The handler's response is buffered (it is sent once stored); the lease
  (``lease_ttl``) is not renewed while the handler runs, so it bounds how
  long a handler may take before a retry can run it again.

Pure ASGI: it needs neither Starlette nor FastAPI.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from typing import Any, Awaitable, Callable, Dict, Iterable, List, MutableMapping, Optional, Tuple, Union

import grpc

from ._util import Seconds, durations, seconds
from .errors import DeadlineExceeded, IdempotencyKeyMismatch, LeaseLost, SidecarError, Unavailable
from .aio import AsyncClient
from .aio.idempotent import _retry_unavailable
from .v1 import idempotency_pb2

__all__ = ["IdempotencyMiddleware", "DEFAULT_METHODS", "REPLAYED_HEADER"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Methods covered unless ``methods=`` says otherwise.
DEFAULT_METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: Header added to a replayed response.
REPLAYED_HEADER = "Idempotent-Replayed"

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_STORED = _HOP_BY_HOP | {"set-cookie", "status"}
_MAX_KEY_LEN = 255
_OUTCOME = idempotency_pb2.CheckOrRecordIdempotencyResponse

log = logging.getLogger("resilience_sidecar")


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class IdempotencyMiddleware:
    """Runs covered requests carrying ``Idempotency-Key`` once per key and
    replays their stored response to duplicates (see the module doc).

    :param app: the ASGI app to wrap (``add_middleware`` passes it).
    :param client: an :class:`~resilience_sidecar.aio.AsyncClient`, or a
        function without arguments returning one: it is called once, at the
        first covered request, inside the server's event loop (an
        ``AsyncClient`` must be created in the loop that uses it). The
        middleware does not close it.
    :param scope: prefix of the stored key, ``<scope>:<Idempotency-Key>``
        (default ``"http"``), so that keys of HTTP requests do not meet keys
        the app uses elsewhere.
    :param key_fn: ``key_fn(asgi_scope, idempotency_key) -> str`` gives the
        stored key instead (e.g. to add the tenant or user:
        ``lambda s, k: f"http:{s['state']['tenant']}:{k}"``).
    :param required: answer a covered request without the header with 400
        ``IDEMPOTENCY_KEY_MISSING`` instead of running it unguarded.
    :param methods: the covered methods; others always pass through.
    :param max_body: largest request body read (bytes, default 1 MiB); a
        larger one is answered 413 and the handler does not run.
    :param lease_ttl: how long the first request holds the key (default 30 s)
        before a retry may run the handler again.
    :param retention: how long a stored response is replayed (default 24 h).
    :param wait: how long a duplicate waits for a running first request to
        finish (default 0: answer 409 at once).
    :param header: the request header's name (case-insensitive).
    """

    def __init__(
        self,
        app: ASGIApp,
        client: Union[AsyncClient, Callable[[], AsyncClient]],
        *,
        scope: str = "http",
        key_fn: Optional[Callable[[Scope, str], str]] = None,
        required: bool = False,
        methods: Iterable[str] = DEFAULT_METHODS,
        max_body: int = 1 << 20,
        lease_ttl: Seconds = 30.0,
        retention: Seconds = 24 * 3600.0,
        wait: Seconds = 0.0,
        header: str = "Idempotency-Key",
    ) -> None:
        if client is None:
            raise TypeError("IdempotencyMiddleware needs client= (an AsyncClient or a function returning one)")
        if not scope:
            raise ValueError("scope must not be empty")
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0, not {max_body}")
        wait_s = seconds(wait) or 0.0
        if wait_s < 0:
            raise ValueError(f"wait must be >= 0, not {wait}")
        self.app = app
        self._client = client if isinstance(client, AsyncClient) else None
        self._client_factory = None if isinstance(client, AsyncClient) else client
        if self._client_factory is not None and not callable(self._client_factory):
            raise TypeError(f"client must be an AsyncClient or a function returning one, not {type(client).__name__}")
        self._client_lock: Optional[asyncio.Lock] = None
        self.scope = scope
        self.key_fn = key_fn
        self.required = required
        self.methods = frozenset(m.upper() for m in methods)
        self.max_body = max_body
        self.lease_ttl = lease_ttl
        self.retention = retention
        self.wait = wait_s
        self.header = header
        self._header_b = header.lower().encode("latin-1")

    async def _get_client(self) -> AsyncClient:
        if self._client is not None:
            return self._client
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                made = self._client_factory()  # type: ignore[misc]
                if not isinstance(made, AsyncClient):
                    raise TypeError(f"client factory returned {type(made).__name__}, not an AsyncClient")
                self._client = made
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers", ()) if k.lower() == self._header_b]
        if not values:
            if self.required:
                await _problem(send, 400, "IDEMPOTENCY_KEY_MISSING", f"this request needs an {self.header} header")
                return
            await self.app(scope, receive, send)
            return
        key = values[0].decode("latin-1")
        if len(values) > 1:
            await _problem(send, 400, "IDEMPOTENCY_KEY_INVALID", f"the {self.header} header must be sent once")
            return
        if not 1 <= len(key) <= _MAX_KEY_LEN or not all(" " <= c <= "~" for c in key):
            await _problem(
                send, 400, "IDEMPOTENCY_KEY_INVALID",
                f"the {self.header} header must be 1 to {_MAX_KEY_LEN} printable ASCII characters",
            )
            return

        try:
            body = await self._read_body(scope, receive)
        except _BodyTooLarge:
            await _problem(
                send, 413, "IDEMPOTENCY_BODY_TOO_LARGE",
                f"a request with an {self.header} header may have at most {self.max_body} bytes of body",
            )
            return
        except _ClientGone:
            return

        store_key = self.key_fn(scope, key) if self.key_fn is not None else f"{self.scope}:{key}"
        fp = request_fingerprint(scope, body)
        try:
            client = await self._get_client()
            req = idempotency_pb2.CheckOrRecordIdempotencyRequest(
                key=store_key,
                fingerprint=fp,
                **durations(lease_ttl=self.lease_ttl, retention=self.retention, wait_timeout=self.wait),
            )
            timeout = None if client.timeout is None else self.wait + client.timeout
            resp = await client.idempotency.CheckOrRecordIdempotency(req, timeout=timeout)
        except IdempotencyKeyMismatch:
            await _problem(
                send, 422, "IDEMPOTENCY_KEY_REUSED",
                f"this {self.header} was used with another request (method, path or body)",
            )
            return
        except (Unavailable, DeadlineExceeded) as e:
            log.warning("idempotency middleware: sidecar unavailable for %r: %s", store_key, e)
            await _problem(
                send, 503, "SIDECAR_UNAVAILABLE", "the idempotency store cannot be reached; retry later",
                retry_after=1,
            )
            return

        if resp.outcome == _OUTCOME.OUTCOME_COMPLETED:
            await _replay(send, resp.result)
            return
        if resp.outcome == _OUTCOME.OUTCOME_IN_PROGRESS:
            delay = resp.retry_after.ToTimedelta().total_seconds()
            await _problem(
                send, 409, "IDEMPOTENCY_KEY_IN_USE",
                f"a request with this {self.header} is being processed; retry later",
                retry_after=max(1, math.ceil(delay)),
            )
            return
        if resp.outcome != _OUTCOME.OUTCOME_STARTED:
            raise SidecarError(grpc.StatusCode.INTERNAL, "", f"unexpected idempotency outcome {resp.outcome}")
        await self._run(client, store_key, resp.lease_id, scope, body, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for k, v in scope.get("headers", ()):
            if k.lower() == b"content-length":
                try:
                    if int(v) > self.max_body:
                        raise _BodyTooLarge()
                except ValueError:
                    pass
        chunks: List[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run(
        self, client: AsyncClient, key: str, lease_id: str, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        body_sent = False

        async def replay_receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status: Optional[int] = None
        headers: List[Tuple[bytes, bytes]] = []
        messages: List[Message] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            messages.append(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            # The handler failed (or was cancelled): give the key back so a
            # retry runs it, and let the error go on to the server.
            await self._release(client, key, lease_id)
            raise
        if status is None or status >= 500:
            await self._release(client, key, lease_id)
        else:
            data = b"".join(bytes(m.get("body", b"")) for m in messages if m["type"] == "http.response.body")
            metadata = _stored_headers(headers)
            metadata["status"] = str(status)
            try:
                await _retry_unavailable(
                    lambda: client.idempotency.CompleteIdempotency(
                        idempotency_pb2.CompleteIdempotencyRequest(
                            key=key, lease_id=lease_id,
                            result=idempotency_pb2.IdempotencyResult(data=data, metadata=metadata),
                        )
                    ),
                    3,
                )
            except SidecarError as e:
                # The handler ran: its response goes out all the same; a retry
                # after the lease expires may run it again.
                log.warning("idempotency middleware: response of %r not stored (%s); a retry may run it again", key, e)
        for m in messages:
            await send(m)

    async def _release(self, client: AsyncClient, key: str, lease_id: str) -> None:
        async def release() -> None:
            await _retry_unavailable(
                lambda: client.idempotency.ReleaseIdempotency(
                    idempotency_pb2.ReleaseIdempotencyRequest(key=key, lease_id=lease_id)
                ),
                3,
            )

        try:
            await asyncio.shield(release())
        except LeaseLost:
            pass
        except SidecarError as e:
            log.warning("idempotency middleware: release of %r failed (%s); it frees itself when its lease expires", key, e)


def request_fingerprint(scope: Scope, body: bytes) -> str:
    """Hex SHA-256 over ``method "\\n" path[?query] "\\n" body``: the path as
    the client sent it (``raw_path`` when the server gives it)."""
    path = scope.get("raw_path") or scope.get("path", "").encode("utf-8")
    query = scope.get("query_string") or b""
    if query:
        path = bytes(path) + b"?" + bytes(query)
    h = hashlib.sha256()
    h.update(scope["method"].upper().encode("ascii"))
    h.update(b"\n")
    h.update(bytes(path))
    h.update(b"\n")
    h.update(body)
    return h.hexdigest()


def _stored_headers(headers: List[Tuple[bytes, bytes]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in headers:
        name = k.decode("latin-1").lower()
        if name in _NOT_STORED:
            continue
        value = v.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


async def _replay(send: Send, result: idempotency_pb2.IdempotencyResult) -> None:
    md = dict(result.metadata)
    try:
        status = int(md.pop("status"))
    except (KeyError, ValueError):
        raise SidecarError(grpc.StatusCode.DATA_LOSS, "", f"stored idempotent response has no valid status: {dict(result.metadata)!r}")
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in sorted(md.items())]
    headers.append((REPLAYED_HEADER.lower().encode("latin-1"), b"true"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": bytes(result.data), "more_body": False})


_TITLES = {
    400: "Bad Request",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    503: "Service Unavailable",
}


async def _problem(send: Send, status: int, code: str, detail: str, retry_after: Optional[int] = None) -> None:
    """An RFC 9457 problem response."""
    body = json.dumps(
        {"type": "about:blank", "title": _TITLES[status], "status": status, "detail": detail, "code": code},
        separators=(",", ":"),
    ).encode("utf-8")
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
