"""``AsyncClient.bulkhead`` and ``AsyncClient.rate_limited``: the asyncio
forms of :mod:`resilience_sidecar.bulkhead` and
:mod:`resilience_sidecar.ratelimit`, on the shared session code."""

from __future__ import annotations

import functools
import inspect
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from .._util import Seconds
from ..bulkhead import PERMIT_KIND, BulkheadBase
from ..ratelimit import KeyArg, key_of, refused
from .lock import AsyncLease, _AsyncHoldSession

if TYPE_CHECKING:
    from . import AsyncClient

__all__ = ["AsyncBulkhead"]

F = TypeVar("F", bound=Callable[..., Any])


class AsyncBulkhead(BulkheadBase):
    """The asyncio form of :class:`resilience_sidecar.Bulkhead`, from
    :meth:`AsyncClient.bulkhead`::

        async with client.bulkhead("payments-db", 8, wait=2) as permit:
            await query(fence=permit.fencing_token)   # permit.lost: an asyncio.Event

        @client.bulkhead("payments-db", 8, wait=2)
        async def query(...): ...

    Same semantics: a HoldPermit session renewed by the sidecar, lost by
    the local clock (``RENEWAL_OVERDUE``); :class:`BulkheadFull` when the
    wait ends without a permit.
    """

    def __init__(self, client: "AsyncClient", name: str, limit: int, **kwargs: Any) -> None:
        super().__init__(client, name, limit, **kwargs)
        self._session: Optional[_AsyncHoldSession] = None

    async def __aenter__(self) -> AsyncLease:
        if self._session is not None:
            raise RuntimeError(f"bulkhead {self.name!r} is already entered through this object")
        session = _AsyncHoldSession(self._client, self, PERMIT_KIND)
        lease = await session.open()
        self._session = session
        return lease

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        session = self._session
        if session is None:
            raise RuntimeError(f"bulkhead {self.name!r} was not entered")
        self._session = None
        await session.close(exc)

    def __call__(self, func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError("AsyncBulkhead guards async def functions; for plain ones use Client.bulkhead")

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = _AsyncHoldSession(self._client, self, PERMIT_KIND)
            await session.open()
            try:
                result = await func(*args, **kwargs)
            except BaseException as e:
                await session.close(e)
                raise
            await session.close(None)
            return result

        return wrapper  # type: ignore[return-value]


def async_rate_limited(
    client: "AsyncClient", limiter: str, key: KeyArg, cost: int, wait: Optional[Seconds], timeout: Optional[Seconds]
) -> Callable[[F], F]:
    """The decorator of :meth:`AsyncClient.rate_limited`."""

    def decorate(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError("AsyncClient.rate_limited decorates async def functions; for plain ones use Client.rate_limited")

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = key_of(key, args, kwargs)
            d = await client.take(limiter, k, cost, wait=wait, timeout=timeout)
            if not d.allowed:
                raise refused(limiter, k, cost, d)
            return await func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
