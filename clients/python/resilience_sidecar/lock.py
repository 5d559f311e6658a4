"""``Client.lock``: a lock held through a HoldLock session (``with``), or an
explicit handle (``acquire`` / ``extend`` / ``release``)."""

from __future__ import annotations

import datetime as _dt
import heapq
import itertools
import queue
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

import grpc

from ._lease import DEFAULT_TTL, HoldKind, LeaseState
from ._util import Seconds, durations, seconds, to_datetime
from .errors import (
    DeadlineExceeded,
    LeaseLost,
    NotAcquired,
    ReleaseNotConfirmed,
    SidecarError,
    from_rpc_error,
)
from .v1 import lock_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Lease", "Lock", "LockSession"]

LOST_REASONS = {
    lock_pb2.HoldLockResponse.Lost.REASON_LEASE_LOST: "LEASE_LOST",
    lock_pb2.HoldLockResponse.Lost.REASON_MAX_HOLD: "MAX_HOLD",
    lock_pb2.HoldLockResponse.Lost.REASON_SHUTDOWN: "SHUTDOWN",
    lock_pb2.HoldLockResponse.Lost.REASON_STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
}


class _Watchdog:
    """One thread for every lease of the process: it fires each lease's
    local deadline. It runs only while some lease is armed and exits when
    none is (it is started again by the next one)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: List[Tuple[float, int, "Lease"]] = []
        self._seq = itertools.count()
        self._running = False

    def arm(self, lease: "Lease", deadline: float) -> None:
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._seq), lease))
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="resilience-lease-clock", daemon=True).start()
            else:
                self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    if not self._heap:
                        self._running = False
                        return
                    deadline, _, lease = self._heap[0]
                    if lease._closed or lease.is_lost() or lease.deadline != deadline:
                        heapq.heappop(self._heap)  # stale: renewed, released or lost since
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cv.wait(left)
            lease._check_deadline()  # outside the condition's lock: it sets an event


_watchdog = _Watchdog()


class Lease(LeaseState):
    """A held lock as the application sees it.

    Pass ``fencing_token`` to the resource the lock protects, so that it can
    refuse a write from a stale holder. ``lost`` (a ``threading.Event``) is
    set the moment the lease is lost: when the sidecar reports it, when the
    session breaks, or when this process's monotonic clock passes the
    lease's local deadline (``confirmed_at + ttl - max(ttl/10, 100 ms)``)
    without a newer renewal confirmation (``lost_reason ==
    "RENEWAL_OVERDUE"``), so a frozen sidecar cannot keep it alive. Long
    critical sections check it between steps (:meth:`check`), or wait on it.
    """

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
        self.lost = threading.Event()
        self._callbacks: List[Callable[["Lease"], Any]] = []
        self._cb_lock = threading.Lock()
        self._mark_lock = threading.Lock()

    def is_lost(self) -> bool:
        return self.lost.is_set()

    def _mark_lost(self, reason: str, message: str, local: bool = True) -> None:
        with self._mark_lock:  # the reader and the clock thread may both notice
            super()._mark_lost(reason, message, local)

    def _set_lost_event(self) -> None:
        self.lost.set()
        with self._cb_lock:
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def _arm(self, deadline: float) -> None:
        _watchdog.arm(self, deadline)

    def add_lost_callback(self, fn: Callable[["Lease"], Any]) -> None:
        """Calls ``fn(lease)`` once when the lease is lost (at once if it
        already is), from the thread that noticed: keep it short (cancel
        work, set a flag)."""
        with self._cb_lock:
            if not self.lost.is_set():
                self._callbacks.append(fn)
                return
        fn(self)


def _acquire_request(key: str, ttl: Optional[Seconds], wait: Optional[Seconds], owner: str, max_hold: Optional[Seconds]):
    return lock_pb2.HoldLockRequest.Acquire(
        key=key, owner=owner, **durations(ttl=ttl, wait_timeout=wait, max_hold=max_hold)
    )


def _lease_args(acquired: Any, key: str) -> "dict[str, Any]":
    return dict(
        key=acquired.key or key,
        fencing_token=acquired.fencing_token,
        expire_time=to_datetime(acquired.expire_time),
        owner=acquired.owner,
        lease_id=acquired.lease_id,
    )


def _not_acquired(key: str, first: Any) -> BaseException:
    h = first.not_acquired.holder
    return NotAcquired(key, h.owner, h.fencing_token, to_datetime(h.expire_time))


#: A lock's HoldLock session.
LOCK_KIND = HoldKind(
    what="lock",
    rpc="HoldLock",
    method=lambda client: client.locks.HoldLock,
    release=lambda: lock_pb2.HoldLockRequest(release=lock_pb2.HoldLockRequest.Release()),
    lost_reasons=LOST_REASONS,
    lease_args=_lease_args,
    not_acquired=_not_acquired,
)


class _HoldSession:
    """One HoldLock session (the ``with`` form of :class:`Lock`) or, with
    another :class:`HoldKind`, one HoldPermit session (a bulkhead's)."""

    def __init__(self, client: "Client", holder: Any, kind: HoldKind = LOCK_KIND) -> None:
        self._client = client
        self._kind = kind
        self._key = holder.key
        self._ttl = holder.ttl
        self._first_request = holder._hold_request()
        self._timeout = holder.timeout
        self._requests: "queue.Queue[Optional[Any]]" = queue.Queue()
        self._first = threading.Event()
        self._first_msg: Optional[lock_pb2.HoldLockResponse] = None
        self._first_err: Optional[BaseException] = None
        self._done = threading.Event()
        self._call: Any = None
        self.lease: Optional[Lease] = None

    # -- request side -------------------------------------------------------

    def _request_iter(self) -> Iterator[Any]:
        while True:
            msg = self._requests.get()
            if msg is None:  # half-close: the sidecar answers `released`
                return
            yield msg

    # -- response side (the reader thread) ----------------------------------

    def _read(self) -> None:
        try:
            for resp in self._call:
                now = time.monotonic()
                kind = resp.WhichOneof("event")
                if not self._first.is_set():
                    # The lease exists before anyone can see it, so that no
                    # later event (a quick `lost`) can find it missing.
                    if kind == "acquired":
                        lease = Lease(ttl=self._ttl, **self._kind.lease_args(resp.acquired, self._key))
                        lease.what = self._kind.what
                        lease._confirm(now)
                        self.lease = lease
                    self._first_msg = resp
                    self._first.set()
                    continue
                held = self.lease
                if held is None:  # the first message said not_acquired; the stream ends
                    continue
                if kind == "renewed":
                    if held._confirm(now):
                        held.expire_time = to_datetime(resp.renewed.expire_time) or held.expire_time
                elif kind == "released":
                    held.released = True
                    held._closed = True
                elif kind == "lost":
                    self._mark_lost(self._kind.lost_reasons.get(resp.lost.reason, "LEASE_LOST"), resp.lost.message, local=False)
            if not self._first.is_set():
                self._first_err = SidecarError(
                    grpc.StatusCode.INTERNAL, "", f"{self._kind.rpc} stream for {self._key!r} ended without an answer"
                )
            else:
                self._mark_lost("STREAM_ENDED", f"the session stream ended before the {self._kind.what} was released")
        except grpc.RpcError as e:
            err = from_rpc_error(e, addr=self._client.addr)
            if not self._first.is_set():
                self._first_err = err
            else:
                self._mark_lost("STREAM_ENDED", f"the session stream broke: {err}")
        except BaseException as e:  # never leave open/close waiting
            if not self._first.is_set():
                self._first_err = e
            else:
                self._mark_lost("STREAM_ENDED", f"the session reader failed: {e!r}")
        finally:
            self._first.set()
            self._done.set()

    def _mark_lost(self, reason: str, message: str, local: bool = True) -> None:
        if self.lease is not None:
            self.lease._mark_lost(reason, message, local)

    # -- open / close -------------------------------------------------------

    def open(self) -> Lease:
        self._requests.put(self._first_request)
        self._call = self._kind.method(self._client)(self._request_iter())
        threading.Thread(target=self._read, name=f"resilience-{self._kind.what}:{self._key}", daemon=True).start()

        bound = self._timeout
        if not self._first.wait(bound):
            self._abort(cancel=True)
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "",
                f"no answer from the sidecar at {self._client.addr} to acquire {self._key!r} within {bound:g}s",
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
            raise self._kind.not_acquired(self._key, first)
        raise SidecarError(grpc.StatusCode.INTERNAL, "", f"unexpected first {self._kind.rpc} event {kind!r}")

    def _abort(self, cancel: bool = False) -> None:
        """Ends a session that never held the lease."""
        self._requests.put(None)
        if (cancel or not self._done.wait(1.0)) and self._call is not None:
            self._call.cancel()

    def close(self, exc: Optional[BaseException]) -> None:
        lease = self.lease
        assert lease is not None
        lease._check_deadline()  # a deadline passed during the block counts as lost in it
        lease._exiting = True
        self._requests.put(self._kind.release())
        self._requests.put(None)
        # Wait for the answer until the lease's local deadline or the call
        # deadline, whichever is first: never longer than the lease is ours.
        bound = lease.remaining()
        if self._client.timeout is not None:
            bound = min(bound, self._client.timeout)
        t0 = time.monotonic()
        if not self._done.wait(bound):
            self._mark_lost("STREAM_ENDED", f"the sidecar did not confirm the release within {bound:.2f}s")
            self._call.cancel()  # the sidecar releases on a broken stream; else the lease expires
            self._done.wait(1.0)
        lease._closed = True
        if lease.released:
            return
        if not lease.is_lost():  # the stream ended quietly after the release: not confirmed
            self._mark_lost("STREAM_ENDED", "the session ended without confirming the release")
        if lease._lost_after_exit:
            err: BaseException = ReleaseNotConfirmed(lease.key, lease.fencing_token, time.monotonic() - t0, what=lease.what)
            if exc is not None:
                _add_note(exc, f"resilience: {err}")
                return
            raise err
        if isinstance(exc, LeaseLost):
            return  # the block noticed (lease.check()) and is already raising it
        raise lease._lost_error()


def _add_note(e: BaseException, note: str) -> None:
    if hasattr(e, "add_note"):  # Python 3.11+
        e.add_note(note)


class Lock:
    """A distributed lock on ``key``, from :meth:`Client.lock`. Two ways to hold it:

    **with** (a HoldLock session: the sidecar renews the lease about every
    ttl/3 and releases it at exit, or when this process dies)::

        with client.lock("orders/42", ttl=10, wait=5) as lease:
            write(fence=lease.fencing_token)

    **explicit handle**, as redis-py's ``Lock`` (the lease lives ``ttl``
    unless you :meth:`extend` it)::

        lock = client.lock("orders/42", ttl=30, wait=5)
        if lock.acquire():
            try:
                write(fence=lock.fencing_token)
                lock.extend()            # another ttl from now
            finally:
                lock.release()

    Either way the lease is lost by this process's own clock when no grant
    or renewal was confirmed within ``ttl - max(ttl/10, 100 ms)``.
    Acquiring waits at most ``timeout`` (default: ``wait`` plus the
    client's call timeout); releasing waits at most until the lease's local
    deadline or the client's call timeout, whichever is first, then raises
    :class:`ReleaseNotConfirmed` (the lock frees itself at expiry). A Lock
    holds one lease at a time and is not meant to be shared by threads.
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
        timeout: Optional[Seconds] = None,
    ) -> None:
        self._client = client
        self.key = key
        self._ttl_arg = ttl
        self._wait = wait
        #: Lease TTL in seconds (the sidecar's default, 10 s, when none was given).
        given_ttl = seconds(ttl)
        self.ttl: float = given_ttl if given_ttl is not None else DEFAULT_TTL
        #: How long acquiring waits for a held lock (seconds).
        self.wait: float = seconds(wait) or 0.0
        self.owner = owner
        self.max_hold = max_hold
        t = seconds(timeout)
        #: Bound on acquiring (seconds), or None for none.
        self.timeout: Optional[float] = (
            t if t is not None else (None if client.timeout is None else self.wait + client.timeout)
        )
        self._session: Optional[_HoldSession] = None
        self._lease: Optional[Lease] = None
        #: After a failed :meth:`acquire`: the holder, as a NotAcquired (``holder``, ``fencing_token``).
        self.not_acquired: Optional[NotAcquired] = None

    # -- with: a HoldLock session ---------------------------------------------

    def _hold_request(self) -> lock_pb2.HoldLockRequest:
        return lock_pb2.HoldLockRequest(
            acquire=_acquire_request(self.key, self._ttl_arg, self._wait, self.owner, self.max_hold)
        )

    def __enter__(self) -> Lease:
        if self._lease is not None:
            raise RuntimeError(f"lock {self.key!r} is already held through this Lock")
        session = _HoldSession(self._client, self)
        lease = session.open()
        self._session, self._lease = session, lease
        return lease

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        session = self._session
        if session is None:
            raise RuntimeError(f"lock {self.key!r} was not entered")
        self._session, self._lease = None, None
        session.close(exc)

    # -- explicit handle: AcquireLock / RenewLock / ReleaseLock ---------------

    @property
    def lease(self) -> Optional[Lease]:
        """The lease held through this Lock (either way), or None."""
        return self._lease

    @property
    def fencing_token(self) -> Optional[int]:
        """The held lease's fencing token, or None when not held."""
        return self._lease.fencing_token if self._lease is not None else None

    def acquire(self, wait: Optional[Seconds] = None, *, timeout: Optional[Seconds] = None) -> bool:
        """Takes the lock: True when granted, False when the wait (``wait``,
        default the Lock's) ended with someone else holding it
        (:attr:`not_acquired` tells who). The lease lives ``ttl`` from the
        grant unless :meth:`extend` renews it. Raises a :class:`SidecarError`
        when the sidecar refuses or does not answer within ``timeout``
        (default: the wait plus the client's call timeout)."""
        if self._lease is not None:
            raise RuntimeError(f"lock {self.key!r} is already held through this Lock")
        w = self.wait if wait is None else (seconds(wait) or 0.0)
        t = seconds(timeout)
        bound = t if t is not None else (None if self._client.timeout is None else w + self._client.timeout)
        req = lock_pb2.AcquireLockRequest(key=self.key, owner=self.owner, **durations(ttl=self._ttl_arg, wait_timeout=w))
        resp = self._client.locks.AcquireLock(req, timeout=bound)
        now = time.monotonic()
        if not resp.acquired:
            h = resp.holder
            self.not_acquired = NotAcquired(self.key, h.owner, h.fencing_token, to_datetime(h.expire_time))
            return False
        self.not_acquired = None
        lease = Lease(
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

    def _held(self) -> Lease:
        lease = self._lease
        if lease is None or self._session is not None:
            raise RuntimeError(f"lock {self.key!r} is not held through acquire()")
        return lease

    def extend(self, ttl: Optional[Seconds] = None) -> None:
        """Renews the lease: it lives ``ttl`` (default: the Lock's) from now,
        and its local deadline moves accordingly. Raises :class:`LeaseLost`
        when the lease is already lost (its local deadline passed included)."""
        lease = self._held()
        lease.check()
        new_ttl = seconds(ttl) if ttl is not None else lease.ttl
        req = lock_pb2.RenewLockRequest(key=self.key, lease_id=lease._lease_id, **durations(ttl=new_ttl))
        bound = lease.remaining()
        if self._client.timeout is not None:
            bound = min(bound, self._client.timeout)
        try:
            resp = self._client.locks.RenewLock(req, timeout=max(bound, 0.001))
        except LeaseLost as e:
            lease._mark_lost("LEASE_LOST", e.message)
            raise lease._lost_error() from e
        except DeadlineExceeded:
            lease.check()  # past the local deadline: lost
            raise
        if not lease._confirm(time.monotonic(), new_ttl):
            raise lease._lost_error()
        lease.expire_time = to_datetime(resp.expire_time) or lease.expire_time

    def release(self) -> None:
        """Frees the lock. Raises :class:`LeaseLost` when the lease was lost
        before (the critical section may have run without exclusion), and
        :class:`ReleaseNotConfirmed` when the sidecar did not confirm within
        the lease's local deadline or the client's call timeout (the lock
        frees itself at expiry)."""
        lease = self._held()
        self._lease = None
        lease._check_deadline()
        if lease.is_lost():
            lease._closed = True
            raise lease._lost_error()
        bound = lease.remaining()
        if self._client.timeout is not None:
            bound = min(bound, self._client.timeout)
        t0 = time.monotonic()
        try:
            self._client.locks.ReleaseLock(
                lock_pb2.ReleaseLockRequest(key=self.key, lease_id=lease._lease_id), timeout=max(bound, 0.001)
            )
        except LeaseLost as e:
            lease._mark_lost("LEASE_LOST", e.message)
            lease._closed = True
            raise lease._lost_error() from e
        except SidecarError as e:
            lease._closed = True
            raise ReleaseNotConfirmed(self.key, lease.fencing_token, time.monotonic() - t0, e) from e
        lease.released = True
        lease._closed = True

    def owned(self) -> bool:
        """True while this Lock holds a lease that is not lost (by the local
        clock; no call)."""
        lease = self._lease
        if lease is None:
            return False
        lease._check_deadline()
        return not lease.is_lost()

    def locked(self) -> bool:
        """True when anyone holds the lock (asks the sidecar), as redis-py's ``locked()``."""
        return self._client.locks.GetLock(lock_pb2.GetLockRequest(key=self.key)).held

    def __repr__(self) -> str:
        return f"Lock(key={self.key!r}, ttl={self.ttl:g}, lease={self._lease!r})"


#: The name of :class:`Lock` before it gained the explicit handle.
LockSession = Lock
