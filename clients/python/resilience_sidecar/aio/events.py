"""``AsyncClient.subscribe``: a subscription read with ``async for``."""

from __future__ import annotations

import asyncio
import inspect
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Generator, Optional, Union

import grpc

from .._util import Seconds, seconds
from ..errors import DeadlineExceeded, SidecarError, Unavailable, from_rpc_error
from ..events import RetryAfter, log
from ..v1 import events_pb2

if TYPE_CHECKING:
    from . import AsyncClient

__all__ = ["AsyncSubscription"]


class AsyncSubscription:
    """The asyncio form of :class:`resilience_sidecar.Subscription`, from
    :meth:`AsyncClient.subscribe`; open it with ``async with`` (cancelled
    at exit) or ``await``::

        async with client.subscribe("orders.placed", "shipping", "shipping-1") as sub:
            await sub.run(ship)            # ship may be async; ack on return, nack on exception

        sub = await client.subscribe(...)
        async for event in sub:
            ...
            await sub.ack(event)
    """

    def __init__(self, client: "AsyncClient", request: events_pb2.SubscribeRequest) -> None:
        self._client = client
        self._request = request
        self.topic = request.topic
        self.group = request.group
        self.consumer = request.consumer
        self._call: Any = None
        self._cancelled = False
        #: True when this subscription created the consumer group.
        self.group_created = False

    async def _open(self) -> "AsyncSubscription":
        if self._call is not None:
            return self
        self._call = self._client.events.Subscribe(self._request)
        try:
            first = await asyncio.wait_for(self._call.read(), self._client.timeout)
        except asyncio.TimeoutError:
            self._call.cancel()
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "",
                f"no answer from the sidecar at {self._client.addr} to Subscribe within {self._client.timeout:g}s",
            ) from None
        except grpc.RpcError as e:
            raise from_rpc_error(e, addr=self._client.addr) from None
        if first is grpc.aio.EOF:
            raise Unavailable(grpc.StatusCode.UNAVAILABLE, "", f"the subscription to {self.topic!r} ended without an answer")
        if first.WhichOneof("kind") != "subscribed":
            self._call.cancel()
            raise SidecarError(grpc.StatusCode.INTERNAL, "", f"unexpected first Subscribe message {first.WhichOneof('kind')!r}")
        self.group_created = first.subscribed.group_created
        return self

    def __await__(self) -> Generator[Any, None, "AsyncSubscription"]:
        return self._open().__await__()

    async def __aenter__(self) -> "AsyncSubscription":
        return await self._open()

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.cancel()

    def __aiter__(self) -> "AsyncSubscription":
        return self

    async def __anext__(self) -> events_pb2.Event:
        if self._call is None:
            await self._open()
        while True:
            if self._cancelled:
                raise StopAsyncIteration
            try:
                resp = await self._call.read()
            except asyncio.CancelledError:
                if self._cancelled:
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as e:
                if self._cancelled:
                    raise StopAsyncIteration from None
                raise from_rpc_error(e, addr=self._client.addr) from None
            if resp is grpc.aio.EOF:
                if self._cancelled:
                    raise StopAsyncIteration
                raise Unavailable(
                    grpc.StatusCode.UNAVAILABLE, "", f"the sidecar at {self._client.addr} ended the subscription to {self.topic!r}"
                )
            if resp.WhichOneof("kind") == "event":
                return resp.event

    async def ack(self, event: Union[events_pb2.Event, str]) -> bool:
        event_id = event if isinstance(event, str) else event.event_id
        return await self._client.ack(self.topic, self.group, event_id)

    async def nack(self, event: Union[events_pb2.Event, str], retry_after: Optional[Seconds] = None) -> bool:
        event_id = event if isinstance(event, str) else event.event_id
        return await self._client.nack(self.topic, self.group, event_id, retry_after=retry_after)

    async def run(self, handler: Callable[[events_pb2.Event], Any], *, nack_delay: Optional[Seconds] = None) -> None:
        """See :meth:`resilience_sidecar.Subscription.run`; ``handler`` may be
        a coroutine function. A cancelled run nacks the event in hand."""
        async for event in self:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
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
                await asyncio.shield(self.nack(event, retry_after=delay or None))
                if not isinstance(e, Exception):
                    raise
            else:
                await self.ack(event)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Ends the subscription (idempotent); the iteration stops without an error."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "open"
        return f"AsyncSubscription(topic={self.topic!r}, group={self.group!r}, consumer={self.consumer!r}, {state})"
