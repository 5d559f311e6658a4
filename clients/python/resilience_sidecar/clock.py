"""``Client.lamport_clock``: a named Lamport clock kept by the sidecar."""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

from .v1 import clock_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["LamportClock"]


class LamportClock:
    """A named Lamport clock shared by every sidecar of the namespace on the
    same store, from :meth:`Client.lamport_clock`::

        clock = client.lamport_clock("orders")
        msg["ts"] = clock.stamp()              # outgoing message or local event
        clock.observe(incoming["ts"])          # a stamp from elsewhere

    If event a happened before event b, a's stamp is lower than b's. Values
    are integers from 1 to 2**63-1, never handed out twice. Errors are the
    client's typed errors (:class:`StoreUnavailable`, :class:`LimitExceeded`
    when the clock is exhausted, :class:`InvalidArgument`). Thread-safe.
    """

    def __init__(self, client: "Client", name: str) -> None:
        self._client = client
        self.name = name

    def stamp(self) -> int:
        """A new value, greater than every value the clock handed out before."""
        return self.reserve(1)[0]

    def reserve(self, count: int) -> Tuple[int, int]:
        """A block of ``count`` (1-100000) consecutive new values, as ``(first, last)``."""
        r = self._client.clocks.NextLamport(clock_pb2.NextLamportRequest(clock=self.name, count=count))
        return r.first, r.last

    def observe(self, stamp: int) -> int:
        """Merges a received stamp (at most 2**63-2): the clock moves to
        max(current, stamp) + 1, the stamp of the receive event, returned."""
        return self._client.clocks.ObserveLamport(
            clock_pb2.ObserveLamportRequest(clock=self.name, timestamp=stamp)
        ).timestamp

    def current(self) -> int:
        """The highest value handed out so far (0 if none), without advancing."""
        return self._client.clocks.GetLamport(clock_pb2.GetLamportRequest(clock=self.name)).timestamp

    def __repr__(self) -> str:
        return f"LamportClock({self.name!r})"
