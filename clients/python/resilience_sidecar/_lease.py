"""The lease's local clock, shared by the sync and the asyncio lock helpers.

A lease is trusted only as long as this process's monotonic clock says so:
each grant or renewal confirmation received at monotonic time ``t`` moves
the lease's local deadline to ``t + ttl - margin``, with ``margin =
max(ttl / 10, 100 ms)`` and ``ttl`` the TTL this session asked for (never the
sidecar's wall-clock ``expire_time``). When the deadline passes without a
newer confirmation, the lease is lost with reason ``RENEWAL_OVERDUE``: a
frozen or partitioned sidecar cannot keep a lease alive in the app's eyes
after the store may have handed the lock to someone else.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any, Callable, Dict, Optional

import grpc

from .errors import LeaseLost

__all__ = ["DEFAULT_TTL", "MIN_MARGIN", "RENEWAL_OVERDUE", "HoldKind", "LeaseState", "margin_for"]

#: The sidecar's default lock TTL (seconds), used when a lock sets none.
DEFAULT_TTL = 10.0
#: The smallest safety margin (seconds) between the local deadline and the TTL.
MIN_MARGIN = 0.1
#: The lost reason of a lease whose local deadline passed without renewal.
RENEWAL_OVERDUE = "RENEWAL_OVERDUE"


def margin_for(ttl: float) -> float:
    """The safety margin of a lease with this TTL: max(ttl/10, 100 ms)."""
    return max(ttl / 10.0, MIN_MARGIN)


class LeaseState:
    """What the sync and asyncio Lease share: identity, the local deadline,
    and the lost state (set once, never cleared). Subclasses provide the
    ``lost`` event and arm the timer that fires at the deadline."""

    def __init__(
        self,
        key: str,
        fencing_token: int,
        expire_time: Optional[_dt.datetime],
        owner: str,
        ttl: float,
        lease_id: str = "",
    ) -> None:
        self.key = key
        self.fencing_token = fencing_token
        #: The sidecar's expiry (UTC, its wall clock), moved by renewals;
        #: informative only: the local deadline decides.
        self.expire_time = expire_time
        self.owner = owner
        #: The TTL the session asked for (seconds).
        self.ttl = ttl
        #: Monotonic time the last grant or renewal confirmation was received.
        self.confirmed_at: float = 0.0
        #: Monotonic local deadline: confirmed_at + ttl - margin.
        self.deadline: float = 0.0
        #: Monotonic time the lease was signalled lost, or None.
        self.lost_at: Optional[float] = None
        #: Why the lease was lost ("RENEWAL_OVERDUE", "LEASE_LOST", "MAX_HOLD",
        #: "SHUTDOWN", "STORE_UNAVAILABLE", "STREAM_ENDED"), or None.
        self.lost_reason: Optional[str] = None
        #: The sidecar's (or the transport's, or the clock's) explanation, or "".
        self.lost_message: str = ""
        #: True once the sidecar confirmed the release.
        self.released: bool = False
        #: What the lease holds: "lock", or "permit" (of a bulkhead).
        self.what = "lock"
        self._lease_id = lease_id
        self._closed = False  # released or abandoned: the clock no longer matters
        self._exiting = False  # the critical section ended; only the release is pending
        self._lost_after_exit = False

    # -- the local clock ------------------------------------------------------

    def remaining(self) -> float:
        """Seconds until the local deadline (0 when it passed or the lease is lost)."""
        if self.is_lost():
            return 0.0
        return max(0.0, self.deadline - time.monotonic())

    def _confirm(self, at: float, ttl: Optional[float] = None) -> bool:
        """Records a grant or renewal confirmation received at monotonic
        ``at``; False when the lease is already lost (a late renewal does not
        revive it)."""
        if self.is_lost() or self._closed:
            return False
        if ttl is not None:
            self.ttl = ttl
        self.confirmed_at = at
        self.deadline = at + self.ttl - margin_for(self.ttl)
        self._arm(self.deadline)
        return True

    def _overdue_message(self) -> str:
        return (
            f"no renewal of the lease on {self.key!r} confirmed within {self.ttl - margin_for(self.ttl):g}s "
            f"(TTL {self.ttl:g}s minus a {margin_for(self.ttl):g}s margin, by this process's monotonic clock): "
            f"the store may give the {self.what} to someone else; stop the critical section"
        )

    def _check_deadline(self) -> None:
        """Marks the lease lost if its local deadline passed (the timer's
        callback, and a check before trusting the lease)."""
        if not self.is_lost() and not self._closed and time.monotonic() >= self.deadline:
            self._mark_lost(RENEWAL_OVERDUE, self._overdue_message())

    # -- lost -----------------------------------------------------------------

    def is_lost(self) -> bool:
        raise NotImplementedError

    def _set_lost_event(self) -> None:
        raise NotImplementedError

    def _arm(self, deadline: float) -> None:
        raise NotImplementedError

    def _mark_lost(self, reason: str, message: str, local: bool = True) -> None:
        """Sets the lease lost (once). ``local``: noticed by this process (its
        clock, a broken stream), not reported by the sidecar."""
        if self.is_lost() or self.released:
            return
        # After the critical section ended, a loss this process noticed
        # itself is an unconfirmed release; a `lost` from the sidecar means
        # the lease was gone before the release arrived.
        self._lost_after_exit = self._exiting and local
        self.lost_reason = reason
        self.lost_message = message
        self.lost_at = time.monotonic()
        self._set_lost_event()

    def check(self) -> None:
        """Raises :class:`LeaseLost` if the lease was lost (its local deadline
        passed included)."""
        self._check_deadline()
        if self.is_lost():
            raise self._lost_error()

    def _lost_error(self) -> LeaseLost:
        err = LeaseLost(
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_LOST",
            f"lease of {self.what} {self.key!r} lost ({self.lost_reason}): {self.lost_message}; "
            + ("the critical section may have run without exclusion" if self.what == "lock" else "the work may have run beyond the bulkhead's bound"),
            metadata={"key": self.key, "lost_reason": self.lost_reason or "", "fencing_token": str(self.fencing_token)},
        )
        err.lost_reason = self.lost_reason or "LEASE_LOST"
        return err

    def __repr__(self) -> str:
        state = f"lost={self.lost_reason}" if self.is_lost() else ("released" if self.released else "held")
        return f"{type(self).__name__}(key={self.key!r}, fencing_token={self.fencing_token}, owner={self.owner!r}, {state})"



class HoldKind:
    """What differs between a HoldLock session (a lock) and a HoldPermit
    session (a bulkhead permit), for the session code they share
    (``lock._HoldSession`` and ``aio.lock._AsyncHoldSession``): the stub
    method, the release message, the lost reasons, how the grant becomes a
    lease and a refusal an exception."""

    def __init__(
        self,
        what: str,
        rpc: str,
        method: Callable[[Any], Any],
        release: Callable[[], Any],
        lost_reasons: Dict[int, str],
        lease_args: Callable[[Any, str], Dict[str, Any]],
        not_acquired: Callable[[str, Any], BaseException],
    ) -> None:
        self.what = what
        self.rpc = rpc
        self.method = method
        self.release = release
        self.lost_reasons = lost_reasons
        self.lease_args = lease_args
        self.not_acquired = not_acquired
