"""The asyncio client of the resilience sidecar (grpc.aio).

    from resilience_sidecar.aio import AsyncClient

    async with AsyncClient() as client:      # $SIDECAR_ADDR or 127.0.0.1:50051
        async with client.lock("orders/42", ttl=10, wait=5) as lease:
            ...                              # lease.fencing_token, lease.lost (asyncio.Event)

        @client.idempotent(key_fn=lambda order: f"charge/{order}")
        async def charge(order): ...

        payments = client.breaker("payments")
        r = await client.execute_call("payments", "/charges", method="POST", body=b"...")
        async with client.saga("order-42", "place-order") as saga:
            await saga.add_compensation("reserve", upstream="inventory", path="/release/42")

The same helpers, semantics and typed errors as
:class:`resilience_sidecar.Client`. Create the client inside the event loop
that uses it (grpc.aio binds a channel to its loop).
"""

from __future__ import annotations

import asyncio
import os
import time
from types import TracebackType
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .._util import Seconds, duration, seconds
from ..breaker import Excluded, Headers, UpstreamResponse, execute_call_deadline, execute_call_request, upstream_response
from ..client import DEFAULT_ADDR, DEFAULT_TIMEOUT, ENV_ADDR, channel_options_with_defaults, resolve_token
from ..errors import DeadlineExceeded, SidecarError, SidecarUnreachable, Unavailable
from ..events import PublishResult, publish_request, subscribe_request
from ..v1 import (
    breaker_pb2_grpc,
    clock_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    idempotency_pb2_grpc,
    lock_pb2_grpc,
    ratelimit_pb2_grpc,
    saga_pb2_grpc,
    semaphore_pb2_grpc,
)
from ._interceptors import interceptors
from ..ratelimit import KeyArg, RateDecision, decision_from, take_deadline, take_request
from .bulkhead import AsyncBulkhead, async_rate_limited
from .events import AsyncSubscription
from .helpers import AsyncBreaker, AsyncLamportClock, AsyncSaga
from .idempotent import AsyncExecution, make_decorator, run_idempotent
from .lock import AsyncLease, AsyncLock

__all__ = [
    "AsyncBreaker",
    "AsyncBulkhead",
    "AsyncClient",
    "AsyncExecution",
    "AsyncLamportClock",
    "AsyncLease",
    "AsyncLock",
    "AsyncSaga",
    "AsyncSubscription",
]

F = TypeVar("F", bound=Callable[..., Any])


class AsyncClient:
    """A grpc.aio connection to the resilience sidecar: the asyncio twin of
    :class:`resilience_sidecar.Client` (same arguments, environment
    variables, default deadline, reconnect backoff and typed errors).

    Raw stubs (awaitable; failures raise :class:`SidecarError` subclasses):
    ``locks``, ``idempotency``, ``clocks``, ``breakers``, ``sagas``,
    ``events``, ``rate_limits``, ``semaphores``, ``health``. Helpers:
    :meth:`lock` (``async with`` and the explicit handle), :meth:`take`,
    :meth:`rate_limited`, :meth:`bulkhead`, :meth:`idempotent` (``await`` it, or decorate an
    ``async def``), :meth:`breaker`, :meth:`execute_call`, :meth:`saga`,
    :meth:`lamport_clock`, :meth:`publish`, :meth:`subscribe`, :meth:`ack`,
    :meth:`nack`, :meth:`outbox_status`, :meth:`wait_ready`. Close it
    (``await client.close()``) or use ``async with``.
    """

    def __init__(
        self,
        addr: Optional[str] = None,
        token: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        *,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.addr: str = addr or os.environ.get(ENV_ADDR) or DEFAULT_ADDR
        self.timeout: Optional[float] = float(timeout) if timeout else None
        self.channel: grpc.aio.Channel = grpc.aio.insecure_channel(
            self.addr,
            options=channel_options_with_defaults(options),
            interceptors=interceptors(self.addr, resolve_token(token), self.timeout),
        )
        self.locks = lock_pb2_grpc.LockServiceStub(self.channel)
        self.idempotency = idempotency_pb2_grpc.IdempotencyServiceStub(self.channel)
        self.clocks = clock_pb2_grpc.ClockServiceStub(self.channel)
        self.breakers = breaker_pb2_grpc.BreakerServiceStub(self.channel)
        self.sagas = saga_pb2_grpc.SagaServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.rate_limits = ratelimit_pb2_grpc.RateLimitServiceStub(self.channel)
        self.semaphores = semaphore_pb2_grpc.SemaphoreServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(addr={self.addr!r}, timeout={self.timeout!r})"

    async def wait_ready(self, timeout: Seconds = 10.0, service: str = "") -> None:
        """See :meth:`resilience_sidecar.Client.wait_ready`."""
        limit = seconds(timeout) or 0.0
        deadline = time.monotonic() + limit
        last: Any = None
        while True:
            left = deadline - time.monotonic()
            try:
                resp = await self.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=max(left, 0.05), wait_for_ready=True
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except (Unavailable, DeadlineExceeded) as e:
                last = e
            if time.monotonic() + 0.1 > deadline:
                break
            await asyncio.sleep(0.1)  # real time: polling the health service
        detail = last.message if isinstance(last, SidecarError) else f"health status {last}"
        raise SidecarUnreachable(
            grpc.StatusCode.UNAVAILABLE, "", f"sidecar at {self.addr} not ready within {limit:g}s: {detail}"
        )

    # -- helpers ----------------------------------------------------------------

    def lock(
        self,
        key: str,
        ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None,
        owner: str = "",
        *,
        max_hold: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> AsyncLock:
        """The lock ``key``: ``async with client.lock(...) as lease`` or the
        explicit handle; see :meth:`resilience_sidecar.Client.lock`."""
        return AsyncLock(self, key, ttl=ttl, wait=wait, owner=owner, max_hold=max_hold, timeout=timeout)

    async def take(
        self,
        limiter: str,
        key: str = "",
        cost: int = 1,
        *,
        wait: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> RateDecision:
        """Takes ``cost`` from ``key`` of ``limiter``: see
        :meth:`resilience_sidecar.Client.take`."""
        resp = await self.rate_limits.Take(
            take_request(limiter, key, cost, wait), timeout=take_deadline(wait, timeout, self.timeout)
        )
        return decision_from(resp)

    def rate_limited(
        self,
        limiter: str,
        key: KeyArg = "",
        cost: int = 1,
        *,
        wait: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> Callable[[F], F]:
        """Decorates an ``async def`` to run only once ``cost`` was taken
        (waiting up to ``wait``), else raise :class:`RateLimited`: see
        :meth:`resilience_sidecar.Client.rate_limited`."""
        return async_rate_limited(self, limiter, key, cost, wait, timeout)

    def bulkhead(
        self,
        name: str,
        limit: int,
        *,
        ttl: Optional[Seconds] = None,
        wait: Optional[Seconds] = None,
        owner: str = "",
        max_hold: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> AsyncBulkhead:
        """The bulkhead ``name`` of ``limit`` permits: ``async with
        client.bulkhead(...) as permit`` or a decorator; see
        :class:`AsyncBulkhead`."""
        return AsyncBulkhead(self, name, limit, ttl=ttl, wait=wait, owner=owner, max_hold=max_hold, timeout=timeout)

    def idempotent(
        self,
        key: Optional[str] = None,
        fingerprint: Optional[str] = None,
        fn: Optional[Callable[[], Any]] = None,
        *,
        key_fn: Optional[Callable[..., str]] = None,
        fingerprint_fn: Optional[Callable[..., str]] = None,
        **options: Any,
    ) -> Any:
        """Runs an operation at most once per key (see
        :meth:`resilience_sidecar.Client.idempotent` for the rules)::

            receipt = await client.idempotent(key, fingerprint(body), lambda: charge(body))

            @client.idempotent(key_fn=lambda order, amount: f"charge/{order}")
            async def charge(order, amount): ...

        ``fn`` may return an awaitable (a coroutine function), which is
        awaited. A cancelled operation releases the key, like a failed one.
        """
        if callable(key):
            raise TypeError("use @client.idempotent(key_fn=...) or @client.idempotent(\"key\"), not bare @client.idempotent")
        if fn is not None:
            if key is None:
                raise TypeError("idempotent(key, fingerprint, fn): key is required")
            return run_idempotent(self, key, fingerprint or "", fn, **options)
        return make_decorator(self, key, fingerprint, key_fn, fingerprint_fn, options)

    def breaker(
        self, name: str, *, exclude: Sequence[Excluded] = (), permit_ttl: Optional[Seconds] = None
    ) -> AsyncBreaker:
        """The breaker ``name`` as a guard around coroutines: see :class:`AsyncBreaker`."""
        return AsyncBreaker(self, name, exclude=exclude, permit_ttl=permit_ttl)

    async def execute_call(
        self,
        upstream: str,
        path: str = "/",
        *,
        method: str = "GET",
        query: str = "",
        headers: Headers = None,
        body: Union[bytes, str] = b"",
        timeout: Optional[Seconds] = None,
        idempotency_key: str = "",
    ) -> UpstreamResponse:
        """See :meth:`resilience_sidecar.Client.execute_call`."""
        req = execute_call_request(upstream, path, method, query, headers, body, timeout, idempotency_key)
        resp = await self.breakers.ExecuteCall(req, timeout=execute_call_deadline(timeout, self.timeout))
        return upstream_response(resp)

    def saga(
        self,
        saga_id: str,
        name: str,
        *,
        timeout: Optional[Seconds] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> AsyncSaga:
        """A saga this process orchestrates: see :class:`AsyncSaga`."""
        return AsyncSaga(self, saga_id, name, timeout=timeout, metadata=metadata)

    def lamport_clock(self, name: str) -> AsyncLamportClock:
        return AsyncLamportClock(self, name)

    # -- events -----------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: Union[bytes, str],
        *,
        key: str = "",
        headers: Optional[Mapping[str, str]] = None,
        idempotency_key: str = "",
        timeout: Optional[float] = None,
    ) -> PublishResult:
        """See :meth:`resilience_sidecar.Client.publish`."""
        resp = await self.events.Publish(publish_request(topic, payload, key, headers, idempotency_key), timeout=timeout)
        return PublishResult(resp.event_id, resp.duplicate)

    def subscribe(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        max_in_flight: int = 0,
        visibility_timeout: Optional[Seconds] = None,
        max_deliveries: int = 0,
        start_from: Union[None, str, int] = None,
    ) -> AsyncSubscription:
        """See :meth:`resilience_sidecar.Client.subscribe`; open the result
        with ``async with`` or ``await``."""
        req = subscribe_request(topic, group, consumer, max_in_flight, visibility_timeout, max_deliveries, start_from)
        return AsyncSubscription(self, req)

    async def ack(self, topic: str, group: str, event_id: str) -> bool:
        return (await self.events.Ack(events_pb2.AckRequest(topic=topic, group=group, event_id=event_id))).acked

    async def nack(self, topic: str, group: str, event_id: str, retry_after: Optional[Seconds] = None) -> bool:
        req = events_pb2.NackRequest(topic=topic, group=group, event_id=event_id)
        d = duration(retry_after)
        if d is not None:
            req.retry_after.CopyFrom(d)
        return (await self.events.Nack(req)).requeued

    async def outbox_status(self) -> events_pb2.GetOutboxStatusResponse:
        return await self.events.GetOutboxStatus(events_pb2.GetOutboxStatusRequest())
