"""``Client.lock``: a lock held through a HoldLock session."""

from __future__ import annotations

import datetime as _dt
import queue
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Iterator, Optional

import grpc

from ._util import Seconds, durations, seconds, to_datetime
from .errors import DeadlineExceeded, LeaseLost, NotAcquired, SidecarError, from_rpc_error
from .v1 import lock_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Lease", "LockSession"]

_LOST_REASONS = {
    lock_pb2.HoldLockResponse.Lost.REASON_LEASE_LOST: "LEASE_LOST",
    lock_pb2.HoldLockResponse.Lost.REASON_MAX_HOLD: "MAX_HOLD",
    lock_pb2.HoldLockResponse.Lost.REASON_SHUTDOWN: "SHUTDOWN",
    lock_pb2.HoldLockResponse.Lost.REASON_STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
}


class Lease:
    """A held lock as the application sees it.

    Pass ``fencing_token`` to the resource the lock protects, so that it can
    refuse a write from a stale holder (one whose lease expired while it was
    paused). ``lost`` is set the moment the sidecar reports the lease lost
    (or the session breaks); long critical sections should check it between
    steps, e.g. with :meth:`check`.
    """

    def __init__(self, key: str, fencing_token: int, expire_time: Optional[_dt.datetime], owner: str) -> None:
        self.key = key
        self.fencing_token = fencing_token
        #: Current expiry (UTC), moved forward by the sidecar's renewals.
        self.expire_time = expire_time
        self.owner = owner
        #: Set when the lease is lost; never cleared.
        self.lost = threading.Event()
        #: Why the lease was lost ("LEASE_LOST", "MAX_HOLD", "SHUTDOWN",
        #: "STORE_UNAVAILABLE", "STREAM_ENDED"), or None.
        self.lost_reason: Optional[str] = None
        #: The sidecar's (or the transport's) explanation, or "".
        self.lost_message: str = ""

    def check(self) -> None:
        """Raises :class:`LeaseLost` if the lease was lost."""
        if self.lost.is_set():
            raise self._lost_error()

    def _lost_error(self) -> LeaseLost:
        err = LeaseLost(
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_LOST",
            f"lease of lock {self.key!r} lost ({self.lost_reason}): {self.lost_message}; "
            "the critical section may have run without exclusion",
        )
        err.lost_reason = self.lost_reason or "LEASE_LOST"
        return err

    def __repr__(self) -> str:
        state = f"lost={self.lost_reason}" if self.lost.is_set() else "held"
        return f"Lease(key={self.key!r}, fencing_token={self.fencing_token}, owner={self.owner!r}, {state})"


class LockSession:
    """Context manager returned by :meth:`Client.lock`.

    ``__enter__`` opens a HoldLock stream, sends ``acquire`` and waits for the
    answer (at most ``wait`` plus the client's timeout); it returns the
    :class:`Lease` or raises :class:`NotAcquired`. A background thread reads
    the stream for the rest of the session: the sidecar renews the lease
    about every ttl/3 and reports a loss, which sets ``lease.lost``.
    ``__exit__`` sends ``release`` and waits for the answer; if the lease was
    lost while the block ran, it raises :class:`LeaseLost` (even when the
    block itself succeeded: the critical section may have run without
    exclusion). If this process dies, the sidecar releases the lock when the
    stream breaks.
    """

    def __init__(
        self,
        client: "Client",
        key: str,
        *,
        ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None,
        owner: str = "",
        max_hold: Optional[Seconds] = None,
    ) -> None:
        self._client = client
        self._acquire = lock_pb2.HoldLockRequest.Acquire(
            key=key, owner=owner, **durations(ttl=ttl, wait_timeout=wait, max_hold=max_hold)
        )
        self._key = key
        self._wait = seconds(wait) or 0.0
        self._requests: "queue.Queue[Optional[lock_pb2.HoldLockRequest]]" = queue.Queue()
        self._first = threading.Event()
        self._first_msg: Optional[lock_pb2.HoldLockResponse] = None
        self._first_err: Optional[BaseException] = None
        self._done = threading.Event()
        self._released = False
        self._call: Any = None
        self._reader: Optional[threading.Thread] = None
        self.lease: Optional[Lease] = None
        self._entered = False

    # -- request side -------------------------------------------------------

    def _request_iter(self) -> Iterator[lock_pb2.HoldLockRequest]:
        while True:
            msg = self._requests.get()
            if msg is None:  # half-close: the sidecar answers `released`
                return
            yield msg

    def _close_requests(self) -> None:
        self._requests.put(None)

    # -- response side (the reader thread) ----------------------------------

    def _read(self) -> None:
        try:
            for resp in self._call:
                kind = resp.WhichOneof("event")
                if not self._first.is_set():
                    # The lease exists before anyone can see it, so that no
                    # later event (a quick `lost`) can find it missing.
                    if kind == "acquired":
                        self.lease = Lease(
                            key=resp.acquired.key or self._key,
                            fencing_token=resp.acquired.fencing_token,
                            expire_time=to_datetime(resp.acquired.expire_time),
                            owner=resp.acquired.owner,
                        )
                    self._first_msg = resp
                    self._first.set()
                    continue
                lease = self.lease
                if lease is None:  # the first message said not_acquired; the stream ends
                    continue
                if kind == "renewed":
                    lease.expire_time = to_datetime(resp.renewed.expire_time) or lease.expire_time
                elif kind == "released":
                    self._released = True
                elif kind == "lost":
                    self._mark_lost(_LOST_REASONS.get(resp.lost.reason, "LEASE_LOST"), resp.lost.message)
            if not self._first.is_set():
                self._first_err = SidecarError(
                    grpc.StatusCode.INTERNAL, "", f"HoldLock stream for {self._key!r} ended without an answer"
                )
            else:
                self._mark_lost("STREAM_ENDED", "the session stream ended before the lock was released")
        except grpc.RpcError as e:
            err = from_rpc_error(e, addr=self._client.addr)
            if not self._first.is_set():
                self._first_err = err
            else:
                self._mark_lost("STREAM_ENDED", f"the session stream broke: {err}")
        except BaseException as e:  # never leave __enter__/__exit__ waiting
            if not self._first.is_set():
                self._first_err = e
            else:
                self._mark_lost("STREAM_ENDED", f"the session reader failed: {e!r}")
        finally:
            self._first.set()
            self._done.set()

    def _mark_lost(self, reason: str, message: str) -> None:
        lease = self.lease
        if lease is None or self._released or lease.lost.is_set():
            return
        lease.lost_reason = reason
        lease.lost_message = message
        lease.lost.set()

    # -- context manager ------------------------------------------------------

    def __enter__(self) -> Lease:
        if self._entered:
            raise RuntimeError("a LockSession can be entered once; call client.lock() again")
        self._entered = True
        self._requests.put(lock_pb2.HoldLockRequest(acquire=self._acquire))
        self._call = self._client.locks.HoldLock(self._request_iter())
        self._reader = threading.Thread(target=self._read, name=f"resilience-lock:{self._key}", daemon=True)
        self._reader.start()

        bound = self._client.timeout
        if not self._first.wait(None if bound is None else self._wait + bound):
            self._abort(cancel=True)
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "",
                f"no answer from the sidecar at {self._client.addr} to acquire {self._key!r} "
                f"within {self._wait + (bound or 0):g}s",
            )
        if self._first_err is not None:
            self._abort()
            raise self._first_err
        first = self._first_msg
        assert first is not None
        kind = first.WhichOneof("event")
        if kind == "acquired" and self.lease is not None:
            return self.lease
        self._abort()
        if kind == "not_acquired":
            h = first.not_acquired.holder
            raise NotAcquired(self._key, h.owner, h.fencing_token, to_datetime(h.expire_time))
        raise SidecarError(grpc.StatusCode.INTERNAL, "", f"unexpected first HoldLock event {kind!r}")

    def _abort(self, cancel: bool = False) -> None:
        """Ends a session that never held the lock."""
        self._close_requests()
        if (cancel or not self._done.wait(1.0)) and self._call is not None:
            self._call.cancel()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        lease = self.lease
        assert lease is not None
        self._requests.put(lock_pb2.HoldLockRequest(release=lock_pb2.HoldLockRequest.Release()))
        self._close_requests()
        bound = self._client.timeout
        if not self._done.wait(bound):
            # The sidecar did not confirm the release in time: end the stream
            # (the sidecar releases on a broken stream, or the lease expires),
            # and do not claim that the lock held throughout.
            self._mark_lost("STREAM_ENDED", f"the sidecar did not confirm the release within {bound:g}s")
            if self._call is not None:
                self._call.cancel()
            self._done.wait(1.0)
        if not lease.lost.is_set():
            return None  # the block's exception, if any, propagates
        if isinstance(exc, LeaseLost):
            return None  # the block noticed (lease.check()) and is already raising it
        raise lease._lost_error()

    def __repr__(self) -> str:
        return f"LockSession(key={self._key!r}, lease={self.lease!r})"
