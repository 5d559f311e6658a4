"""``Client.publish`` and ``Client.subscribe``: the sidecar's EventService."""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Optional, Union

import grpc

from ._util import Seconds, duration, seconds
from .errors import DeadlineExceeded, ResilienceError, SidecarError, Unavailable, from_rpc_error
from .v1 import events_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["PublishResult", "RetryAfter", "Subscription"]

log = logging.getLogger("resilience_sidecar")

_START_FROM = {
    None: events_pb2.START_FROM_UNSPECIFIED,
    "earliest": events_pb2.START_FROM_EARLIEST,
    "latest": events_pb2.START_FROM_LATEST,
}


class PublishResult(NamedTuple):
    """What :meth:`Client.publish` returns."""

    #: The event's id in its topic ("<ms>-<seq>", increasing in publish order).
    event_id: str
    #: True when the idempotency key had been published before: nothing was
    #: appended and ``event_id`` is the first event's.
    duplicate: bool


class RetryAfter(ResilienceError):
    """Raise it from a :meth:`Subscription.run` handler to have the event
    redelivered after ``delay`` seconds (or a timedelta) rather than at once.
    Any exception with a ``retry_after`` attribute (seconds) does the same."""

    def __init__(self, delay: Seconds, message: str = "") -> None:
        self.retry_after = seconds(delay)
        super().__init__(message or f"retry after {self.retry_after:g}s")


def publish_request(
    topic: str,
    payload: Union[bytes, str],
    key: str,
    headers: Optional[Mapping[str, str]],
    idempotency_key: str,
) -> events_pb2.PublishRequest:
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    return events_pb2.PublishRequest(
        topic=topic, payload=data, key=key, headers=dict(headers or {}), idempotency_key=idempotency_key
    )


class Subscription:
    """A consumer's subscription to a topic, from :meth:`Client.subscribe`.

    Iterate it for the events (``events_pb2.Event``: ``event_id``, ``key``,
    ``payload``, ``headers``, ``delivery_count``, ...) and settle each with
    :meth:`ack` or :meth:`nack`; or hand :meth:`run` a function that does
    the work, and it acks on return and nacks on an exception.
    :meth:`cancel` (from any thread, or from the handler) ends the
    subscription: the iteration (and :meth:`run`) then stops without an
    error. Use it as a context manager to cancel it at exit.

    Opening it waits for the sidecar's confirmation (at most the client's
    timeout), so that events published after ``client.subscribe`` returns
    are delivered to the group; a refused subscription raises there
    (:class:`InvalidArgument` naming the field, :class:`TopicUnknown`).
    """

    def __init__(self, client: "Client", request: events_pb2.SubscribeRequest) -> None:
        self._client = client
        self.topic = request.topic
        self.group = request.group
        self.consumer = request.consumer
        self._cancelled = threading.Event()
        self._first_timed_out = False
        self._call: Any = client.events.Subscribe(request)
        self._responses: Iterator[events_pb2.SubscribeResponse] = iter(self._call)
        #: True when this subscription created the consumer group.
        self.group_created = False
        self._confirm()

    def _confirm(self) -> None:
        timer: Optional[threading.Timer] = None
        if self._client.timeout:
            timer = threading.Timer(self._client.timeout, self._first_timeout)
            timer.daemon = True
            timer.start()
        try:
            first = next(self._responses)
        except StopIteration:
            raise Unavailable(
                grpc.StatusCode.UNAVAILABLE, "", f"the subscription to {self.topic!r} ended without an answer"
            ) from None
        except grpc.RpcError as e:
            if self._first_timed_out:
                raise DeadlineExceeded(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "",
                    f"no answer from the sidecar at {self._client.addr} to Subscribe within "
                    f"{self._client.timeout:g}s (is it running? frozen?)",
                ) from None
            raise from_rpc_error(e, addr=self._client.addr) from None
        finally:
            if timer is not None:
                timer.cancel()
        if first.WhichOneof("kind") != "subscribed":
            self._call.cancel()
            raise SidecarError(
                grpc.StatusCode.INTERNAL, "", f"unexpected first Subscribe message {first.WhichOneof('kind')!r}"
            )
        self.group_created = first.subscribed.group_created

    def _first_timeout(self) -> None:
        self._first_timed_out = True
        self._call.cancel()

    # -- events ---------------------------------------------------------------

    def __iter__(self) -> Iterator[events_pb2.Event]:
        return self

    def __next__(self) -> events_pb2.Event:
        while True:
            if self._cancelled.is_set():
                raise StopIteration
            try:
                resp = next(self._responses)
            except StopIteration:
                if self._cancelled.is_set():
                    raise
                raise Unavailable(
                    grpc.StatusCode.UNAVAILABLE,
                    "",
                    f"the sidecar at {self._client.addr} ended the subscription to {self.topic!r}",
                ) from None
            except grpc.RpcError as e:
                if self._cancelled.is_set():
                    raise StopIteration from None
                raise from_rpc_error(e, addr=self._client.addr) from None
            if resp.WhichOneof("kind") == "event":
                return resp.event
            # a kind this client does not know: skip it

    def ack(self, event: Union[events_pb2.Event, str]) -> bool:
        """Marks the event processed by the group. False when it was not
        pending (already acked, or dead-lettered): harmless."""
        event_id = event if isinstance(event, str) else event.event_id
        return self._client.ack(self.topic, self.group, event_id)

    def nack(self, event: Union[events_pb2.Event, str], retry_after: Optional[Seconds] = None) -> bool:
        """Gives the event back: redelivered after ``retry_after`` (default:
        at once), counting one more delivery. False when it was not pending."""
        event_id = event if isinstance(event, str) else event.event_id
        return self._client.nack(self.topic, self.group, event_id, retry_after=retry_after)

    def run(
        self,
        handler: Callable[[events_pb2.Event], Any],
        *,
        nack_delay: Optional[Seconds] = None,
    ) -> None:
        """Calls ``handler`` for each event, one at a time, in delivery order,
        until the subscription is cancelled. An event is acked when the
        handler returns and nacked when it raises: redelivered at once, or
        after ``nack_delay``, or after the exception's ``retry_after``
        (:class:`RetryAfter`). The exception is logged (logger
        ``resilience_sidecar``: one WARNING line, the traceback at DEBUG) and
        the loop goes on; an exception that is
        not an ``Exception`` (KeyboardInterrupt) nacks and propagates.

        Returns when :meth:`cancel` was called; raises the sidecar's error
        when it ends the subscription (:class:`ShuttingDown`,
        :class:`Unavailable`) or an ack or nack fails. The settling call of
        the event being handled is made even after a cancel, so that a
        finished event is not delivered again.
        """
        for event in self:
            try:
                handler(event)
            except BaseException as e:
                delay = getattr(e, "retry_after", None)
                if not isinstance(delay, (int, float)):
                    delay = seconds(nack_delay)
                if isinstance(e, Exception) and not isinstance(e, RetryAfter):
                    log.warning(
                        "event %s of %r (delivery %d) failed, nacked: %r",
                        event.event_id, self.topic, event.delivery_count, e,
                    )
                    log.debug("the handler's exception", exc_info=e)
                self.nack(event, retry_after=delay or None)
                if not isinstance(e, Exception):
                    raise
            else:
                self.ack(event)

    # -- lifecycle ------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ends the subscription (thread-safe; idempotent). Events delivered
        and not yet settled are redelivered after the visibility timeout."""
        self._cancelled.set()
        self._call.cancel()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.cancel()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "open"
        return f"Subscription(topic={self.topic!r}, group={self.group!r}, consumer={self.consumer!r}, {state})"


def subscribe_request(
    topic: str,
    group: str,
    consumer: str,
    max_in_flight: int,
    visibility_timeout: Optional[Seconds],
    max_deliveries: int,
    start_from: Union[None, str, int],
) -> events_pb2.SubscribeRequest:
    if isinstance(start_from, str) or start_from is None:
        if start_from not in _START_FROM:
            raise ValueError(f"start_from must be 'earliest', 'latest' or a StartFrom value, not {start_from!r}")
        sf = _START_FROM[start_from]
    else:
        sf = start_from
    req = events_pb2.SubscribeRequest(
        topic=topic, group=group, consumer=consumer, max_in_flight=max_in_flight, max_deliveries=max_deliveries,
        start_from=sf,
    )
    vt = duration(visibility_timeout)
    if vt is not None:
        req.visibility_timeout.CopyFrom(vt)
    return req
