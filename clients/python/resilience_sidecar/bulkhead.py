"""Bulkheads: ``with client.bulkhead(name, limit) as permit:`` holds one of
``limit`` permits of a semaphore shared by every sidecar, through a
HoldPermit session with the lock session's safety (``lock._HoldSession``)."""

from __future__ import annotations

import functools
import inspect
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._lease import DEFAULT_TTL, HoldKind
from ._util import Seconds, durations, seconds, to_datetime
from .errors import BulkheadFull
from .lock import Lease, _HoldSession
from .v1 import semaphore_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["PERMIT_KIND", "Bulkhead"]

F = TypeVar("F", bound=Callable[..., Any])

_LOST = semaphore_pb2.HoldPermitResponse.Lost
PERMIT_LOST_REASONS = {
    _LOST.REASON_LEASE_LOST: "LEASE_LOST",
    _LOST.REASON_MAX_HOLD: "MAX_HOLD",
    _LOST.REASON_SHUTDOWN: "SHUTDOWN",
    _LOST.REASON_STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
}


def _lease_args(acquired: semaphore_pb2.Permit, name: str) -> "dict[str, Any]":
    return dict(
        key=acquired.name or name,
        fencing_token=acquired.fencing_token,
        expire_time=to_datetime(acquired.expire_time),
        owner=acquired.owner,
        lease_id=acquired.permit_id,
    )


def _full(name: str, first: semaphore_pb2.HoldPermitResponse) -> BaseException:
    return BulkheadFull(name, first.not_acquired.held, first.not_acquired.limit)


#: A bulkhead permit's HoldPermit session.
PERMIT_KIND = HoldKind(
    what="permit",
    rpc="HoldPermit",
    method=lambda client: client.semaphores.HoldPermit,
    release=lambda: semaphore_pb2.HoldPermitRequest(release=semaphore_pb2.HoldPermitRequest.Release()),
    lost_reasons=PERMIT_LOST_REASONS,
    lease_args=_lease_args,
    not_acquired=_full,
)


class BulkheadBase:
    """The settings shared by :class:`Bulkhead` and the asyncio one."""

    def __init__(
        self,
        client: Any,
        name: str,
        limit: int,
        *,
        ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None,
        owner: str = "",
        max_hold: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> None:
        self._client = client
        self.name = name
        #: At most this many permits live at once, across every sidecar.
        self.limit = limit
        self._ttl_arg = ttl
        given_ttl = seconds(ttl)
        #: Permit TTL in seconds (the sidecar's default, 10 s, when none was given).
        self.ttl: float = given_ttl if given_ttl is not None else DEFAULT_TTL
        #: How long entering waits for a free permit (seconds).
        self.wait: float = seconds(wait) or 0.0
        self.owner = owner
        self.max_hold = max_hold
        t = seconds(timeout)
        #: Bound on acquiring (seconds), or None for none.
        self.timeout: Optional[float] = (
            t if t is not None else (None if client.timeout is None else self.wait + client.timeout)
        )

    @property
    def key(self) -> str:
        """The bulkhead's name (what the shared session code calls its key)."""
        return self.name

    def _hold_request(self) -> semaphore_pb2.HoldPermitRequest:
        return semaphore_pb2.HoldPermitRequest(
            acquire=semaphore_pb2.HoldPermitRequest.Acquire(
                name=self.name,
                limit=self.limit,
                owner=self.owner,
                **durations(ttl=self._ttl_arg, wait_timeout=self.wait or None, max_hold=self.max_hold),
            )
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, limit={self.limit}, ttl={self.ttl:g}, wait={self.wait:g})"


class Bulkhead(BulkheadBase):
    """A bulkhead from :meth:`Client.bulkhead`: at most ``limit`` holders at
    once across every process and sidecar, as resilience4j's ``Bulkhead``
    but shared::

        with client.bulkhead("payments-db", 8, wait=2) as permit:
            query(fence=permit.fencing_token)

        @client.bulkhead("payments-db", 8, wait=2)
        def query(...): ...

    Entering holds a permit through a HoldPermit session: the sidecar renews
    it about every ttl/3 and gives it back at exit, or when this process
    dies. The permit is a lease with the lock's safety: ``permit.lost`` is
    set, and exiting raises :class:`LeaseLost`, when the sidecar reports the
    permit lost or when this process's monotonic clock passes its local
    deadline (``ttl - max(ttl/10, 100 ms)`` after the last renewal
    received: ``lost_reason == "RENEWAL_OVERDUE"``). Entering raises
    :class:`BulkheadFull` when the wait (default: none) ended without a
    permit, and :class:`DeadlineExceeded` when the sidecar did not answer
    within ``timeout`` (default ``wait`` plus the client's timeout);
    exiting raises :class:`ReleaseNotConfirmed` when the release was not
    confirmed before the permit's local deadline or the client's timeout.
    One Bulkhead object holds one permit at a time through ``with``; as a
    decorator each call enters its own.
    """

    def __init__(self, client: "Client", name: str, limit: int, **kwargs: Any) -> None:
        super().__init__(client, name, limit, **kwargs)
        self._session: Optional[_HoldSession] = None

    def __enter__(self) -> Lease:
        if self._session is not None:
            raise RuntimeError(f"bulkhead {self.name!r} is already entered through this object")
        session = _HoldSession(self._client, self, PERMIT_KIND)
        lease = session.open()
        self._session = session
        return lease

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        session = self._session
        if session is None:
            raise RuntimeError(f"bulkhead {self.name!r} was not entered")
        self._session = None
        session.close(exc)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):
            raise TypeError("Bulkhead guards plain functions; for async def use AsyncClient.bulkhead")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = _HoldSession(self._client, self, PERMIT_KIND)
            session.open()
            try:
                result = func(*args, **kwargs)
            except BaseException as e:
                session.close(e)
                raise
            session.close(None)
            return result

        return wrapper  # type: ignore[return-value]
