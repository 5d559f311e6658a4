"""``AsyncClient.idempotent``: run a coroutine once per key, over grpc.aio."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, TypeVar, Union

import grpc

from .._util import Seconds, durations, seconds
from ..errors import LeaseLost, SidecarError, StillInProgress, Unavailable
from ..idempotent import (
    Outcome,
    Result,
    _add_note,
    _current,
    _default_decode,
    _default_encode,
    default_fingerprint,
)
from ..v1 import idempotency_pb2

if TYPE_CHECKING:
    from . import AsyncClient

__all__ = ["AsyncExecution"]

T = TypeVar("T")


class AsyncExecution:
    """The asyncio form of :class:`resilience_sidecar.Execution`, returned by
    :func:`resilience_sidecar.current_execution` inside an operation run by
    :meth:`AsyncClient.idempotent`: ``attempt``, ``recovery_point``,
    ``recovery_data``, and ``await checkpoint(name, data)``."""

    def __init__(self, client: "AsyncClient", key: str, lease_id: str, attempt: int, recovery_point: str, recovery_data: bytes):
        self.key = key
        self.attempt = attempt
        self.recovery_point = recovery_point
        self.recovery_data = recovery_data
        self._client = client
        self._lease_id = lease_id

    async def checkpoint(self, recovery_point: str, data: bytes = b"") -> None:
        """See :meth:`resilience_sidecar.Execution.checkpoint`."""
        await self._client.idempotency.CheckpointIdempotency(
            idempotency_pb2.CheckpointIdempotencyRequest(
                key=self.key, lease_id=self._lease_id, recovery_point=recovery_point, data=data
            )
        )

    def __repr__(self) -> str:
        return f"AsyncExecution(key={self.key!r}, attempt={self.attempt}, recovery_point={self.recovery_point!r})"


async def _retry_unavailable(call: Callable[[], Awaitable[T]], retries: int) -> T:
    attempt = 0
    while True:
        try:
            return await call()
        except Unavailable as e:
            if attempt >= retries:
                raise
            attempt += 1
            await asyncio.sleep(e.retry_delay if e.retry_delay else 0.1)  # real time: the sidecar's retry hint


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def run_idempotent(
    client: "AsyncClient",
    key: str,
    fingerprint: str,
    fn: Callable[[], Union[Awaitable[Any], Any]],
    *,
    lease_ttl: Optional[Seconds] = None,
    retention: Optional[Seconds] = None,
    wait: Optional[Seconds] = 5.0,
    max_wait: Optional[Seconds] = 60.0,
    unavailable_retries: int = 3,
    encode: Optional[Callable[[Any], Result]] = None,
    decode: Optional[Callable[[Result], Any]] = None,
) -> Any:
    """See :meth:`AsyncClient.idempotent` (the same rules as the sync client's)."""
    enc = encode or _default_encode
    dec = decode or _default_decode
    per_call_wait = max(seconds(wait) or 0.0, 0.0)
    total = seconds(max_wait)
    start = time.monotonic()
    deadline = None if total is None else start + total
    while True:
        w = per_call_wait
        if deadline is not None:
            w = max(0.0, min(w, deadline - time.monotonic()))
        w = int(w * 1000) / 1000
        req = idempotency_pb2.CheckOrRecordIdempotencyRequest(
            key=key, fingerprint=fingerprint, **durations(lease_ttl=lease_ttl, retention=retention, wait_timeout=w)
        )
        timeout = None if client.timeout is None else w + client.timeout
        resp = await _retry_unavailable(
            lambda: client.idempotency.CheckOrRecordIdempotency(req, timeout=timeout), unavailable_retries
        )
        if resp.outcome == Outcome.OUTCOME_COMPLETED:
            return dec(Result(resp.result.data, dict(resp.result.metadata)))
        if resp.outcome == Outcome.OUTCOME_STARTED:
            execution = AsyncExecution(
                client, key, resp.lease_id, resp.attempt, resp.checkpoint.recovery_point, resp.checkpoint.data
            )
            return await _execute(client, execution, fn, enc, dec, unavailable_retries)
        if resp.outcome != Outcome.OUTCOME_IN_PROGRESS:
            raise SidecarError(grpc.StatusCode.INTERNAL, "", f"unexpected idempotency outcome {resp.outcome}")
        if deadline is not None and time.monotonic() >= deadline:
            raise StillInProgress(key, time.monotonic() - start)
        if w <= 0:
            pause = resp.retry_after.ToTimedelta().total_seconds() or 0.1
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)  # real time: the sidecar said when to come back


async def _execute(
    client: "AsyncClient",
    execution: AsyncExecution,
    fn: Callable[[], Any],
    enc: Callable[[Any], Result],
    dec: Callable[[Result], Any],
    retries: int,
) -> Any:
    token = _current.set(execution)  # type: ignore[arg-type]
    try:
        value = await _maybe_await(fn())
        result = enc(value)
    except BaseException as e:
        # Cancelled or failed: the operation (we take it) did not happen;
        # give the key back (shielded, so a cancellation does not skip it).
        async def release() -> None:
            await _retry_unavailable(
                lambda: client.idempotency.ReleaseIdempotency(
                    idempotency_pb2.ReleaseIdempotencyRequest(key=execution.key, lease_id=execution._lease_id)
                ),
                retries,
            )

        try:
            await asyncio.shield(release())
        except LeaseLost:
            pass
        except SidecarError as rerr:
            _add_note(e, f"resilience: release of idempotency key {execution.key!r} failed ({rerr}); it frees itself when its lease expires")
        raise
    finally:
        _current.reset(token)

    try:
        await _retry_unavailable(
            lambda: client.idempotency.CompleteIdempotency(
                idempotency_pb2.CompleteIdempotencyRequest(
                    key=execution.key,
                    lease_id=execution._lease_id,
                    result=idempotency_pb2.IdempotencyResult(data=result.data, metadata=dict(result.metadata)),
                )
            ),
            retries,
        )
    except LeaseLost as e:
        _add_note(e, f"resilience: {execution.key!r} ran but its lease was taken over meanwhile; the operation may have run twice (its value is in .result)")
        e.result = dec(result)  # type: ignore[attr-defined]
        raise
    except SidecarError as e:
        _add_note(e, f"resilience: {execution.key!r} ran but its result was not recorded (its value is in .result)")
        e.result = dec(result)  # type: ignore[attr-defined]
        raise
    return dec(result)


def make_decorator(
    client: "AsyncClient",
    key: Optional[str],
    fingerprint_value: Optional[str],
    key_fn: Optional[Callable[..., str]],
    fingerprint_fn: Optional[Callable[..., str]],
    options: dict,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if key is None and key_fn is None:
        raise TypeError("idempotent needs a key or key_fn=")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(func):
            raise TypeError("AsyncClient.idempotent decorates async def functions; use Client.idempotent for plain ones")

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = key if key is not None else key_fn(*args, **kwargs)  # type: ignore[misc]
            if fingerprint_value is not None:
                fp = fingerprint_value
            elif fingerprint_fn is not None:
                fp = fingerprint_fn(*args, **kwargs)
            else:
                fp = default_fingerprint(args, kwargs)
            return await run_idempotent(client, k, fp, lambda: func(*args, **kwargs), **options)

        return wrapper

    return decorate
