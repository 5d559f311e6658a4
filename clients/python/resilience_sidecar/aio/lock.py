"""``AsyncClient.lock``: ``async with client.lock(...)`` over a HoldLock
session, or the explicit handle (``await lock.acquire()`` ...)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import grpc

from .._lease import DEFAULT_TTL, HoldKind, LeaseState
from .._util import Seconds, durations, seconds, to_datetime
from ..errors import (
    DeadlineExceeded,
    LeaseLost,
    NotAcquired,
    ReleaseNotConfirmed,
    SidecarError,
    from_rpc_error,
)
from ..lock import LOCK_KIND, _acquire_request, _add_note
from ..v1 import lock_pb2

if TYPE_CHECKING:
    from . import AsyncClient

__all__ = ["AsyncLease", "AsyncLock"]


class AsyncLease(LeaseState):
    """A held lock, as :class:`resilience_sidecar.Lease`, for asyncio:
    ``lost`` is an ``asyncio.Event`` (``await lease.lost.wait()``), set by
    the sidecar's report, a broken session, or the event loop's timer at
    the lease's local deadline (``lost_reason == "RENEWAL_OVERDUE"``). Use
    it from the event loop that created it."""

    def __init__(
        self,
        key: str,
        fencing_token: int,
        expire_time: Optional[_dt.datetime],
        owner: str,
        ttl: float = DEFAULT_TTL,
        lease_id: str = "",
    ) -> None:
        super().__init__(key, fencing_token, expire_time, owner, ttl, lease_id)
        #: Set when the lease is lost; never cleared.
        self.lost = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._callbacks: List[Callable[["AsyncLease"], Any]] = []

    def is_lost(self) -> bool:
        return self.lost.is_set()

    def _set_lost_event(self) -> None:
        self.lost.set()
        if self._timer is not None:
            self._timer.cancel()
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # The loop's clock is time.monotonic(), like the deadline; the
        # callback checks again, so an early wake-up changes nothing.
        self._timer = self._loop.call_at(self._loop.time() + (deadline - time.monotonic()), self._check_deadline)

    def _close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()

    def add_lost_callback(self, fn: Callable[["AsyncLease"], Any]) -> None:
        """Calls ``fn(lease)`` once when the lease is lost (at once if it
        already is), on the event loop: e.g. ``task.cancel``."""
        if self.lost.is_set():
            fn(self)
        else:
            self._callbacks.append(fn)


class _AsyncHoldSession:
    """One HoldLock session over grpc.aio (the ``async with`` form of
    AsyncLock) or, with another :class:`HoldKind`, one HoldPermit session
    (a bulkhead's)."""

    def __init__(self, client: "AsyncClient", holder: Any, kind: HoldKind = LOCK_KIND) -> None:
        self._client = client
        self._kind = kind
        self._key = holder.key
        self._ttl = holder.ttl
        self._timeout = holder.timeout
        self._first_request = holder._hold_request()
        self._call: Any = None
        self._first: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        self._done = asyncio.Event()
        self._reader: Optional[asyncio.Task] = None
        self.lease: Optional[AsyncLease] = None

    async def _read(self) -> None:
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    break
                now = time.monotonic()
                kind = resp.WhichOneof("event")
                if not self._first.done():
                    if kind == "acquired":
                        lease = AsyncLease(ttl=self._ttl, **self._kind.lease_args(resp.acquired, self._key))
                        lease.what = self._kind.what
                        lease._confirm(now)
                        self.lease = lease
                    self._first.set_result(resp)
                    continue
                held = self.lease
                if held is None:
                    continue
                if kind == "renewed":
                    if held._confirm(now):
                        held.expire_time = to_datetime(resp.renewed.expire_time) or held.expire_time
                elif kind == "released":
                    held.released = True
                    held._close()
                elif kind == "lost":
                    self._mark_lost(self._kind.lost_reasons.get(resp.lost.reason, "LEASE_LOST"), resp.lost.message, local=False)
            if not self._first.done():
                self._first.set_exception(
                    SidecarError(
                        grpc.StatusCode.INTERNAL, "", f"{self._kind.rpc} stream for {self._key!r} ended without an answer"
                    )
                )
            else:
                self._mark_lost("STREAM_ENDED", f"the session stream ended before the {self._kind.what} was released")
        except grpc.RpcError as e:
            err = from_rpc_error(e, addr=self._client.addr)
            if not self._first.done():
                self._first.set_exception(err)
            else:
                self._mark_lost("STREAM_ENDED", f"the session stream broke: {err}")
        except asyncio.CancelledError:
            if not self._first.done():
                self._first.cancel()
            else:
                self._mark_lost("STREAM_ENDED", "the session was cancelled")
            raise
        except Exception as e:
            if not self._first.done():
                self._first.set_exception(e)
            else:
                self._mark_lost("STREAM_ENDED", f"the session reader failed: {e!r}")
        finally:
            self._done.set()

    def _mark_lost(self, reason: str, message: str, local: bool = True) -> None:
        if self.lease is not None:
            self.lease._mark_lost(reason, message, local)

    async def open(self) -> AsyncLease:
        self._call = self._kind.method(self._client)()
        self._reader = asyncio.create_task(self._read(), name=f"resilience-{self._kind.what}:{self._key}")
        try:
            await self._call.write(self._first_request)
            first = await asyncio.wait_for(asyncio.shield(self._first), self._timeout)
        except asyncio.TimeoutError:
            await self._abort(cancel=True)
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "",
                f"no answer from the sidecar at {self._client.addr} to acquire {self._key!r} within {self._timeout:g}s",
            ) from None
        except BaseException as e:
            await self._abort(cancel=True)
            if isinstance(e, grpc.RpcError):
                raise from_rpc_error(e, addr=self._client.addr) from None
            raise
        kind = first.WhichOneof("event")
        if kind == "acquired" and self.lease is not None:
            return self.lease
        await self._abort()
        if kind == "not_acquired":
            raise self._kind.not_acquired(self._key, first)
        raise SidecarError(grpc.StatusCode.INTERNAL, "", f"unexpected first {self._kind.rpc} event {kind!r}")

    async def _abort(self, cancel: bool = False) -> None:
        """Ends a session that never held the lease."""
        if not cancel:
            try:
                await asyncio.wait_for(self._done.wait(), 1.0)
            except asyncio.TimeoutError:
                cancel = True
        if cancel and self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self, exc: Optional[BaseException]) -> None:
        lease = self.lease
        assert lease is not None
        lease._check_deadline()  # a deadline passed during the block counts as lost in it
        lease._exiting = True
        bound = lease.remaining()
        if self._client.timeout is not None:
            bound = min(bound, self._client.timeout)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(self._send_release(), bound)
            await asyncio.wait_for(self._done.wait(), max(0.0, bound - (time.monotonic() - t0)))
        except (asyncio.TimeoutError, grpc.RpcError):
            self._mark_lost("STREAM_ENDED", f"the sidecar did not confirm the release within {bound:.2f}s")
        self._call.cancel()  # a no-op after the stream ended; else the sidecar releases on a broken stream
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        lease._close()
        if lease.released:
            return
        if not lease.is_lost():
            self._mark_lost("STREAM_ENDED", "the session ended without confirming the release")
        if lease._lost_after_exit:
            err = ReleaseNotConfirmed(lease.key, lease.fencing_token, time.monotonic() - t0, what=lease.what)
            if exc is not None:
                _add_note(exc, f"resilience: {err}")
                return
            raise err
        if isinstance(exc, LeaseLost):
            return
        raise lease._lost_error()

    async def _send_release(self) -> None:
        if self._done.is_set():
            return
        await self._call.write(self._kind.release())
        await self._call.done_writing()


class AsyncLock:
    """The asyncio form of :class:`resilience_sidecar.Lock`, from
    :meth:`AsyncClient.lock`::

        async with client.lock("orders/42", ttl=10, wait=5) as lease:
            await write(fence=lease.fencing_token)

        lock = client.lock("orders/42", ttl=30)
        if await lock.acquire():
            try:
                await write(fence=lock.fencing_token)
                await lock.extend()
            finally:
                await lock.release()

    Same semantics: the ``async with`` form is a HoldLock session renewed by
    the sidecar; the handle is a lease of ``ttl`` you extend; both are lost
    by the local clock (``RENEWAL_OVERDUE``) when no renewal is confirmed
    within ``ttl - max(ttl/10, 100 ms)``; releasing waits at most until the
    lease's local deadline or the client's timeout.
    """

    def __init__(
        self,
        client: "AsyncClient",
        key: str,
        *,
        ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None,
        owner: str = "",
        max_hold: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> None:
        self._client = client
        self.key = key
        self._ttl_arg = ttl
        self._wait = wait
        given_ttl = seconds(ttl)
        self.ttl: float = given_ttl if given_ttl is not None else DEFAULT_TTL
        self.wait: float = seconds(wait) or 0.0
        self.owner = owner
        self.max_hold = max_hold
        t = seconds(timeout)
        self.timeout: Optional[float] = (
            t if t is not None else (None if client.timeout is None else self.wait + client.timeout)
        )
        self._session: Optional[_AsyncHoldSession] = None
        self._lease: Optional[AsyncLease] = None
        self.not_acquired: Optional[NotAcquired] = None

    def _hold_request(self) -> lock_pb2.HoldLockRequest:
        return lock_pb2.HoldLockRequest(
            acquire=_acquire_request(self.key, self._ttl_arg, self._wait, self.owner, self.max_hold)
        )

    async def __aenter__(self) -> AsyncLease:
        if self._lease is not None:
            raise RuntimeError(f"lock {self.key!r} is already held through this AsyncLock")
        session = _AsyncHoldSession(self._client, self)
        lease = await session.open()
        self._session, self._lease = session, lease
        return lease

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        session = self._session
        if session is None:
            raise RuntimeError(f"lock {self.key!r} was not entered")
        self._session, self._lease = None, None
        await session.close(exc)

    @property
    def lease(self) -> Optional[AsyncLease]:
        return self._lease

    @property
    def fencing_token(self) -> Optional[int]:
        return self._lease.fencing_token if self._lease is not None else None

    async def acquire(self, wait: Optional[Seconds] = None, *, timeout: Optional[Seconds] = None) -> bool:
        """See :meth:`resilience_sidecar.Lock.acquire`."""
        if self._lease is not None:
            raise RuntimeError(f"lock {self.key!r} is already held through this AsyncLock")
        w = self.wait if wait is None else (seconds(wait) or 0.0)
        t = seconds(timeout)
        bound = t if t is not None else (None if self._client.timeout is None else w + self._client.timeout)
        req = lock_pb2.AcquireLockRequest(key=self.key, owner=self.owner, **durations(ttl=self._ttl_arg, wait_timeout=w))
        resp = await self._client.locks.AcquireLock(req, timeout=bound)
        now = time.monotonic()
        if not resp.acquired:
            h = resp.holder
            self.not_acquired = NotAcquired(self.key, h.owner, h.fencing_token, to_datetime(h.expire_time))
            return False
        self.not_acquired = None
        lease = AsyncLease(
            key=resp.lease.key or self.key,
            fencing_token=resp.lease.fencing_token,
            expire_time=to_datetime(resp.lease.expire_time),
            owner=resp.lease.owner,
            ttl=self.ttl,
            lease_id=resp.lease.lease_id,
        )
        lease._confirm(now)
        self._lease = lease
        return True

    def _held(self) -> AsyncLease:
        lease = self._lease
        if lease is None or self._session is not None:
            raise RuntimeError(f"lock {self.key!r} is not held through acquire()")
        return lease

    def _bound(self, lease: AsyncLease) -> float:
        bound = lease.remaining()
        if self._client.timeout is not None:
            bound = min(bound, self._client.timeout)
        return max(bound, 0.001)

    async def extend(self, ttl: Optional[Seconds] = None) -> None:
        """See :meth:`resilience_sidecar.Lock.extend`."""
        lease = self._held()
        lease.check()
        new_ttl = seconds(ttl) if ttl is not None else lease.ttl
        req = lock_pb2.RenewLockRequest(key=self.key, lease_id=lease._lease_id, **durations(ttl=new_ttl))
        try:
            resp = await self._client.locks.RenewLock(req, timeout=self._bound(lease))
        except LeaseLost as e:
            lease._mark_lost("LEASE_LOST", e.message)
            raise lease._lost_error() from e
        except DeadlineExceeded:
            lease.check()
            raise
        if not lease._confirm(time.monotonic(), new_ttl):
            raise lease._lost_error()
        lease.expire_time = to_datetime(resp.expire_time) or lease.expire_time

    async def release(self) -> None:
        """See :meth:`resilience_sidecar.Lock.release`."""
        lease = self._held()
        self._lease = None
        lease._check_deadline()
        if lease.is_lost():
            lease._close()
            raise lease._lost_error()
        bound = self._bound(lease)
        t0 = time.monotonic()
        try:
            await self._client.locks.ReleaseLock(
                lock_pb2.ReleaseLockRequest(key=self.key, lease_id=lease._lease_id), timeout=bound
            )
        except LeaseLost as e:
            lease._mark_lost("LEASE_LOST", e.message)
            lease._close()
            raise lease._lost_error() from e
        except SidecarError as e:
            lease._close()
            raise ReleaseNotConfirmed(self.key, lease.fencing_token, time.monotonic() - t0, e) from e
        lease.released = True
        lease._close()

    def owned(self) -> bool:
        lease = self._lease
        if lease is None:
            return False
        lease._check_deadline()
        return not lease.is_lost()

    async def locked(self) -> bool:
        """True when anyone holds the lock (asks the sidecar)."""
        return (await self._client.locks.GetLock(lock_pb2.GetLockRequest(key=self.key))).held

    def __repr__(self) -> str:
        return f"AsyncLock(key={self.key!r}, ttl={self.ttl:g}, lease={self._lease!r})"
