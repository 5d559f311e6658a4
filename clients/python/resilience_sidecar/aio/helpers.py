"""The asyncio forms of the breaker guard, the saga and the Lamport clock."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Mapping, Optional, Sequence, Tuple, TypeVar

from .._util import Seconds, seconds
from ..breaker import REPORT_TIMEOUT, Excluded, _Policy, open_error, report_failed, state_name
from ..errors import SidecarError
from ..saga import POLL_INTERVAL, TERMINAL, SagaTimeout, _SagaBase, failure_reason, reason_text, saga_state_name
from ..v1 import breaker_pb2, clock_pb2, saga_pb2

if TYPE_CHECKING:
    from . import AsyncClient

__all__ = ["AsyncBreaker", "AsyncLamportClock", "AsyncSaga"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AsyncBreaker(_Policy):
    """The asyncio form of :class:`resilience_sidecar.Breaker`, from
    :meth:`AsyncClient.breaker`::

        payments = client.breaker("payments")

        @payments
        async def charge(order): ...

        await payments.call(charge, order)
        async with payments.calling():
            ...

    A cancelled call (``asyncio.CancelledError``) is reported as ignored.
    """

    def __init__(
        self, client: "AsyncClient", name: str, *, exclude: Sequence[Excluded] = (), permit_ttl: Optional[Seconds] = None
    ) -> None:
        super().__init__(name, exclude, permit_ttl)
        self._client = client

    async def _allow(self) -> str:
        resp = await self._client.breakers.AllowCall(self.allow_request())
        if not resp.allowed:
            raise open_error(self.name, resp)
        return resp.permit_id

    async def _report(self, permit_id: str, exc: Optional[BaseException], started: float) -> None:
        timeout = min(REPORT_TIMEOUT, self._client.timeout or REPORT_TIMEOUT)
        req = self.report_request(permit_id, self.outcome(exc), started)
        try:
            # Shielded: a cancelled caller still reports (as ignored).
            await asyncio.shield(self._client.breakers.ReportCall(req, timeout=timeout))
        except SidecarError as e:
            report_failed(self.name, e)
        except asyncio.CancelledError:
            if exc is None:
                raise

    @contextlib.asynccontextmanager
    async def calling(self) -> AsyncIterator[None]:
        """Runs the ``async with`` block as one guarded call."""
        permit = await self._allow()
        started = time.monotonic()
        try:
            yield
        except BaseException as e:
            await self._report(permit, e, started)
            raise
        await self._report(permit, None, started)

    async def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Awaits ``func(*args, **kwargs)`` (a coroutine function, or a plain
        one) as one guarded call and returns its result."""
        async with self.calling():
            return await _maybe_await(func(*args, **kwargs))

    def __call__(self, func: F) -> F:
        """Decorates an ``async def`` so that every call is guarded."""
        if not inspect.iscoroutinefunction(func):
            raise TypeError("AsyncBreaker guards async def functions; for plain ones use Client.breaker")

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await self.call(func, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    async def info(self) -> breaker_pb2.Breaker:
        return (await self._client.breakers.GetBreaker(breaker_pb2.GetBreakerRequest(breaker=self.name))).breaker

    async def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (asks the sidecar)."""
        return state_name((await self.info()).state)

    async def reset(self, reason: str = "") -> None:
        await self._client.breakers.ResetBreaker(breaker_pb2.ResetBreakerRequest(breaker=self.name, reason=reason))

    def __repr__(self) -> str:
        return f"AsyncBreaker({self.name!r})"


class AsyncSaga(_SagaBase):
    """The asyncio form of :class:`resilience_sidecar.Saga`, from
    :meth:`AsyncClient.saga`::

        async with client.saga("order-42", "place-order") as saga:
            await saga.add_compensation("reserve", upstream="inventory", path="/release/42")
            await inventory.reserve(42)
            await saga.step("charge", payments.charge, 42, compensation=compensation("payments", "/refund/42"))
    """

    def __init__(
        self,
        client: "AsyncClient",
        saga_id: str,
        name: str,
        *,
        timeout: Optional[Seconds] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(saga_id, name, timeout, metadata)
        self._client = client

    async def start(self) -> "AsyncSaga":
        await self._client.sagas.StartSaga(self.start_request())
        self.started = True
        return self

    async def add_compensation(self, step: str, compensation: Optional[saga_pb2.Compensation] = None, **fields: Any) -> int:
        """See :meth:`resilience_sidecar.Saga.add_compensation`."""
        resp = await self._client.sagas.RecordStep(self.step_request(step, compensation, fields))
        self.steps.append((step, resp.index))
        return resp.index

    async def step(
        self,
        step: str,
        fn: Callable[..., Any],
        *args: Any,
        compensation: Optional[saga_pb2.Compensation] = None,
        **kwargs: Any,
    ) -> Any:
        """See :meth:`resilience_sidecar.Saga.step`; ``fn`` may be a coroutine function."""
        if compensation is None:
            raise TypeError("step() needs compensation=")
        await self.add_compensation(step, compensation)
        try:
            return await _maybe_await(fn(*args, **kwargs))
        except BaseException as e:
            await self._abort_after(e)
            raise

    async def complete(self) -> saga_pb2.Saga:
        return (await self._client.sagas.CompleteSaga(saga_pb2.CompleteSagaRequest(saga_id=self.saga_id))).saga

    async def abort(self, reason: str = "") -> saga_pb2.Saga:
        return (
            await self._client.sagas.AbortSaga(saga_pb2.AbortSagaRequest(saga_id=self.saga_id, reason=reason_text(reason)))
        ).saga

    async def compensate(self, reason: str = "", *, wait: Optional[Seconds] = None) -> saga_pb2.Saga:
        saga = await self.abort(reason)
        return await self.wait(wait) if wait is not None else saga

    async def get(self) -> saga_pb2.Saga:
        return (await self._client.sagas.GetSaga(saga_pb2.GetSagaRequest(saga_id=self.saga_id))).saga

    async def state(self) -> str:
        return saga_state_name((await self.get()).state)

    async def wait(self, timeout: Optional[Seconds] = 60.0) -> saga_pb2.Saga:
        """See :meth:`resilience_sidecar.Saga.wait`."""
        limit = seconds(timeout)
        start = time.monotonic()
        while True:
            saga = await self.get()
            if saga.state in TERMINAL:
                return saga
            waited = time.monotonic() - start
            if limit is not None and waited >= limit:
                raise SagaTimeout(self.saga_id, saga_state_name(saga.state), waited)
            await asyncio.sleep(POLL_INTERVAL)  # real time: the sidecar compensates in the background

    async def _abort_after(self, exc: BaseException) -> None:
        try:
            # Shielded: a cancelled saga is still aborted, not left to its timeout.
            await asyncio.shield(self.abort(failure_reason(exc)))
        except SidecarError as aerr:
            if hasattr(exc, "add_note"):
                exc.add_note(f"resilience: abort of saga {self.saga_id!r} failed: {aerr}")

    async def __aenter__(self) -> "AsyncSaga":
        if not self.started:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            await self.complete()
            return
        await self._abort_after(exc)


class AsyncLamportClock:
    """The asyncio form of :class:`resilience_sidecar.LamportClock`."""

    def __init__(self, client: "AsyncClient", name: str) -> None:
        self._client = client
        self.name = name

    async def stamp(self) -> int:
        return (await self.reserve(1))[0]

    async def reserve(self, count: int) -> Tuple[int, int]:
        r = await self._client.clocks.NextLamport(clock_pb2.NextLamportRequest(clock=self.name, count=count))
        return r.first, r.last

    async def observe(self, stamp: int) -> int:
        return (
            await self._client.clocks.ObserveLamport(clock_pb2.ObserveLamportRequest(clock=self.name, timestamp=stamp))
        ).timestamp

    async def current(self) -> int:
        return (await self._client.clocks.GetLamport(clock_pb2.GetLamportRequest(clock=self.name))).timestamp

    def __repr__(self) -> str:
        return f"AsyncLamportClock({self.name!r})"
