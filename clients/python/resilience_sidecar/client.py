"""The sidecar client: a channel with auth and deadlines, the raw stubs and the helpers."""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, TypeVar, Union, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._interceptors import ClientInterceptor
from ._util import Seconds, duration, seconds
from .breaker import (
    Breaker,
    Excluded,
    Headers,
    UpstreamResponse,
    execute_call_deadline,
    execute_call_request,
    upstream_response,
)
from .clock import LamportClock
from .errors import DeadlineExceeded, SidecarError, SidecarUnreachable, Unavailable
from .events import PublishResult, Subscription, publish_request, subscribe_request
from .idempotent import make_decorator, run_idempotent
from .bulkhead import Bulkhead
from .lock import Lock
from .ratelimit import KeyArg, RateDecision, decision_from, rate_limited, take_deadline, take_request
from .saga import Saga
from .v1 import (
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

__all__ = ["Client", "DEFAULT_ADDR", "DEFAULT_TIMEOUT", "ENV_ADDR", "ENV_TOKEN", "ENV_TOKEN_FILE"]

#: Environment variable with the sidecar address: "host:port" or "unix:///path".
ENV_ADDR = "SIDECAR_ADDR"
#: Environment variable with the API token.
ENV_TOKEN = "SIDECAR_API_TOKEN"
#: Environment variable naming a file that holds the API token.
ENV_TOKEN_FILE = "SIDECAR_API_TOKEN_FILE"
#: The sidecar's default listen address.
DEFAULT_ADDR = "127.0.0.1:50051"
#: Default deadline (seconds) of every unary call that sets none.
DEFAULT_TIMEOUT = 10.0
#: gRPC channel options every client sets (an option given to the client wins).
#: The sidecar is local: no proxy, and reconnect quickly after it restarts
#: (gRPC's default backoff grows to two minutes; capped at 1 s here, so the
#: first call after a restart waits about a second at most).
CHANNEL_DEFAULTS: "list[Tuple[str, Any]]" = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

F = TypeVar("F", bound=Callable[..., Any])


def channel_options_with_defaults(options: Sequence[Tuple[str, Any]]) -> "list[Tuple[str, Any]]":
    given = {name for name, _ in options}
    return [o for o in CHANNEL_DEFAULTS if o[0] not in given] + list(options)


def resolve_token(token: Optional[str]) -> Optional[str]:
    if token is not None:
        return token or None
    env = os.environ.get(ENV_TOKEN)
    if env:
        return env
    path = os.environ.get(ENV_TOKEN_FILE)
    if path:
        with open(path, encoding="utf-8") as f:  # a missing file is an error, not "no auth"
            return f.read().strip() or None
    return None


class Client:
    """A connection to the resilience sidecar.

    ``addr`` defaults to ``$SIDECAR_ADDR``, else ``127.0.0.1:50051``
    (``unix:///path`` for a Unix socket); ``token`` to ``$SIDECAR_API_TOKEN``,
    else the content of the file named by ``$SIDECAR_API_TOKEN_FILE``, sent
    as ``authorization: Bearer <token>``. ``timeout`` (seconds; None or 0
    disables) is the deadline of every unary call that sets none, so a
    stopped or hung sidecar is an error, not a hang. The sidecar listens on
    localhost: the channel is plaintext and ignores HTTP proxies.

    Raw stubs (calls through them raise :class:`SidecarError` subclasses):
    ``locks``, ``idempotency``, ``clocks``, ``breakers``, ``sagas``, ``events``,
    ``rate_limits``, ``semaphores``, ``health``. Helpers: :meth:`lock`,
    :meth:`take`, :meth:`rate_limited`, :meth:`bulkhead`, :meth:`idempotent`, :meth:`breaker`,
    :meth:`execute_call`, :meth:`saga`, :meth:`lamport_clock`,
    :meth:`publish`, :meth:`subscribe` (with :meth:`ack`, :meth:`nack`),
    :meth:`outbox_status`, :meth:`wait_ready`. The same over asyncio:
    :class:`resilience_sidecar.aio.AsyncClient`.

    Thread-safe; one per process is enough. Close it (or use ``with``)
    when done.
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
        token = resolve_token(token)
        channel_options = channel_options_with_defaults(options)
        self._raw_channel = grpc.insecure_channel(self.addr, options=channel_options)
        self.channel: grpc.Channel = grpc.intercept_channel(
            self._raw_channel, ClientInterceptor(self.addr, token, self.timeout)
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

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._raw_channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(addr={self.addr!r}, timeout={self.timeout!r})"

    def wait_ready(self, timeout: Seconds = 10.0, service: str = "") -> None:
        """Waits until the sidecar's health service answers SERVING (its store
        is reachable), polling every 100 ms. Raises :class:`SidecarUnreachable`
        when it does not within ``timeout``."""
        limit = seconds(timeout) or 0.0
        deadline = time.monotonic() + limit
        last: Any = None
        while True:
            left = deadline - time.monotonic()
            try:
                # wait_for_ready: ride out connection attempts until the deadline.
                resp = self.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=max(left, 0.05), wait_for_ready=True
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except (Unavailable, DeadlineExceeded) as e:
                last = e
            if time.monotonic() + 0.1 > deadline:
                break
            time.sleep(0.1)
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
    ) -> Lock:
        """The distributed lock ``key``: hold it for a ``with`` block, or
        through the explicit handle (:meth:`Lock.acquire`,
        :meth:`Lock.extend`, :meth:`Lock.release`, :meth:`Lock.locked`,
        :attr:`Lock.fencing_token`)::

            with client.lock("orders/42", ttl=10, wait=5, owner="worker-a") as lease:
                db.write(..., fence=lease.fencing_token)
                lease.check()          # raises LeaseLost if the lease was lost

        The ``with`` form is a HoldLock session: the sidecar renews the
        lease about every ttl/3 while the block runs and releases it at exit
        (or when this process dies). ``ttl`` (default 10 s) bounds how long
        the lock outlives a vanished process; ``wait`` (default 0: try once)
        is how long to wait for a held lock; ``max_hold`` makes the sidecar
        end the session after that long; ``timeout`` bounds acquiring
        (default ``wait`` plus the client's timeout). Durations are seconds
        or timedeltas.

        The lease is lost by this process's own monotonic clock when no
        renewal is confirmed within ``ttl - max(ttl/10, 100 ms)`` of the
        previous one (``lease.lost_reason == "RENEWAL_OVERDUE"``), as well as
        when the sidecar reports it. Entering raises :class:`NotAcquired`
        when the wait ends without the lock; exiting raises
        :class:`LeaseLost` when the lease was lost while the block ran, and
        :class:`ReleaseNotConfirmed` when the sidecar did not confirm the
        release before the lease's local deadline (or the client's timeout).
        """
        return Lock(self, key, ttl=ttl, wait=wait, owner=owner, max_hold=max_hold, timeout=timeout)

    def take(
        self,
        limiter: str,
        key: str = "",
        cost: int = 1,
        *,
        wait: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
    ) -> RateDecision:
        """Takes ``cost`` from ``key`` of the declared rate limiter ``limiter``
        and returns the :class:`RateDecision` (``allowed``, ``remaining``,
        ``retry_after``, ``reset_after``, ``limit``). A refusal is a decision
        (falsy), not an exception. With ``wait`` the sidecar waits up to that
        long for the cost to fit (in arrival order per key), or answers
        refused at once when it cannot fit in time. Raises
        :class:`LimiterUnknown` for an undeclared limiter,
        :class:`InvalidArgument` for a bad cost, :class:`DeadlineExceeded`
        past ``timeout`` (default ``wait`` plus the client's timeout)."""
        resp = self.rate_limits.Take(
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
        """A decorator running the function only once ``cost`` was taken from
        ``key`` of ``limiter`` (waiting up to ``wait``, default 0: try once),
        as resilience4j's ``RateLimiter``; otherwise it raises
        :class:`RateLimited` with ``retry_after`` and the function does not
        run. ``key`` may be a function of the call's arguments. Works on
        plain functions and on ``async def`` (the Take then runs in a
        thread; :class:`resilience_sidecar.aio.AsyncClient` does it natively)::

            @client.rate_limited("api", key=lambda user, *_: f"user/{user}", wait=0.5)
            def search(user, query): ...
        """
        return rate_limited(self, limiter, key, cost, wait, timeout)

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
    ) -> Bulkhead:
        """The bulkhead ``name`` of ``limit`` permits shared by every sidecar
        (a leased counting semaphore): ``with client.bulkhead(name, limit,
        wait=2) as permit:`` or as a decorator. The permit is held through a
        HoldPermit session with the lock session's safety (lost by this
        process's clock, ``RENEWAL_OVERDUE``): see :class:`Bulkhead`.
        Entering raises :class:`BulkheadFull` when the wait ends without a
        permit."""
        return Bulkhead(self, name, limit, ttl=ttl, wait=wait, owner=owner, max_hold=max_hold, timeout=timeout)

    def breaker(
        self, name: str, *, exclude: Sequence[Excluded] = (), permit_ttl: Optional[Seconds] = None
    ) -> Breaker:
        """The sidecar's circuit breaker ``name`` as a guard around your own
        calls (pybreaker-style decorator, ``call``, ``calling()``): see
        :class:`Breaker`. Refused calls raise :class:`BreakerOpen` with
        ``retry_delay``."""
        return Breaker(self, name, exclude=exclude, permit_ttl=permit_ttl)

    def execute_call(
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
        """Has the sidecar make an HTTP request to ``upstream`` (a name of its
        config) through the upstream's breaker, with its retries and
        timeouts, and returns the :class:`UpstreamResponse` (any HTTP status
        is a result)::

            r = client.execute_call("payments", "/charges", method="POST",
                                    headers={"content-type": "application/json"},
                                    body=json.dumps(charge), idempotency_key="order-42")
            r.status, r.json()

        ``timeout`` bounds the whole call, retries included (sidecar default
        30 s, capped by the gRPC deadline, which is ``timeout`` plus the
        client's timeout, else the client's timeout). Raises
        :class:`BreakerOpen` (with ``retry_delay``) when the breaker is open,
        :class:`UpstreamUnknown`, :class:`UpstreamUnavailable` (no response)
        or :class:`UpstreamTimeout`. With OpenTelemetry in use the upstream
        gets the caller's ``traceparent``.
        """
        req = execute_call_request(upstream, path, method, query, headers, body, timeout, idempotency_key)
        resp = self.breakers.ExecuteCall(req, timeout=execute_call_deadline(timeout, self.timeout))
        return upstream_response(resp)

    def saga(
        self,
        saga_id: str,
        name: str,
        *,
        timeout: Optional[Seconds] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Saga:
        """A saga this process orchestrates (started at ``with`` or by
        :meth:`Saga.start`): record each step's compensation before doing
        it (:meth:`Saga.add_compensation`, :meth:`Saga.step`); the block
        returning completes the saga, raising aborts it, and the sidecar
        then runs the compensations newest first. ``timeout`` (default 1 h):
        the sidecar compensates a saga not completed by then."""
        return Saga(self, saga_id, name, timeout=timeout, metadata=metadata)

    def lamport_clock(self, name: str) -> LamportClock:
        """The Lamport clock ``name`` (see :class:`LamportClock`)."""
        return LamportClock(self, name)

    @overload
    def idempotent(self, key: str, fingerprint: Optional[str], fn: Callable[[], Any], **options: Any) -> Any: ...

    @overload
    def idempotent(
        self,
        key: Optional[str] = None,
        fingerprint: Optional[str] = None,
        fn: None = None,
        *,
        key_fn: Optional[Callable[..., str]] = None,
        fingerprint_fn: Optional[Callable[..., str]] = None,
        **options: Any,
    ) -> Callable[[F], F]: ...

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
        """Runs an operation at most once per key, across every caller of
        every sidecar sharing the store, and returns its result to all.

        Call it::

            receipt = client.idempotent(key, fingerprint(body), lambda: charge(body))

        or decorate::

            @client.idempotent(key_fn=lambda order, amount: f"charge/{order}")
            def charge(order, amount): ...

        The first caller (outcome STARTED) runs the operation and records its
        result; a caller that finds the key in progress waits for it (up to
        ``wait`` per sidecar call, ``max_wait`` in all, then
        :class:`StillInProgress`); a caller that finds it completed gets the
        stored result without running it. If the operation raises, the key is
        released, so that a later call runs it again, and the exception
        propagates.

        Results: a :class:`Result` (bytes + string map) is stored as is; any
        other value is stored as JSON, and every caller, the first included,
        gets the decoded JSON (so all see the same value). Pass ``encode=`` /
        ``decode=`` for another codec.

        ``fingerprint`` identifies the request (see :func:`fingerprint`); a
        key reused with another one raises :class:`IdempotencyKeyMismatch`.
        The decorator's default fingerprint hashes the arguments as JSON;
        pass ``fingerprint_fn=`` (same arguments as the function) otherwise.
        ``key_fn`` gets the function's arguments too.

        Options: ``lease_ttl`` (1s-1h, sidecar default 30 s: how long before
        another caller may take over from a silent executor), ``retention``
        (1s-720h, default 24 h), ``wait`` (default 5 s), ``max_wait``
        (default 60 s; None waits as long as it takes), ``unavailable_retries``
        (default 3), ``encode``, ``decode``. Inside the operation,
        :func:`current_execution` gives the attempt number and checkpoints.

        If the operation ran but its lease was taken over before its result
        was recorded, :class:`LeaseLost` is raised (it may have run twice),
        with the value in ``.result``.
        """
        if callable(key):
            raise TypeError("use @client.idempotent(key_fn=...) or @client.idempotent(\"key\"), not bare @client.idempotent")
        if fn is not None:
            if key is None:
                raise TypeError("idempotent(key, fingerprint, fn): key is required")
            return run_idempotent(self, key, fingerprint or "", fn, **options)
        return make_decorator(self, key, fingerprint, key_fn, fingerprint_fn, options)

    # -- events -----------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: Union[bytes, str],
        *,
        key: str = "",
        headers: Optional[Mapping[str, str]] = None,
        idempotency_key: str = "",
        timeout: Optional[float] = None,
    ) -> PublishResult:
        """Appends an event to ``topic`` (a str payload is sent as UTF-8) and
        returns ``(event_id, duplicate)``::

            r = client.publish("orders.placed", body, key="order-42",
                               headers={"content-type": "application/json"},
                               idempotency_key="order-42/placed")

        With ``idempotency_key``, retries append once: a key published before
        (within the sidecar's ``events.dedup_retention``, default 24 h) returns
        the first event's id with ``duplicate=True``. Raises
        :class:`InvalidArgument` for a bad topic name or an oversized event
        (``violations`` names the field), :class:`TopicUnknown` for a topic
        the sidecar's config does not declare.
        """
        resp = self.events.Publish(publish_request(topic, payload, key, headers, idempotency_key), timeout=timeout)
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
    ) -> Subscription:
        """Joins the consumer group ``group`` of ``topic`` as ``consumer`` and
        returns the :class:`Subscription` once the sidecar confirmed it::

            with client.subscribe("orders.placed", "shipping", "shipping-1") as sub:
                sub.run(ship)          # acks when ship(event) returns, nacks when it raises

        or, settling each event yourself::

            for event in sub:
                ...
                sub.ack(event)         # or sub.nack(event, retry_after=5)

        Each event goes to one consumer of each group, in publish order;
        unsettled events are redelivered after ``visibility_timeout``
        (100ms-12h, sidecar default 30 s), with ``delivery_count`` increased,
        up to ``max_deliveries`` (default 10) before the dead-letter topic
        ``<topic>.dead``. Delivery is at least once: make the handler
        idempotent, keyed by ``event.event_id``. ``max_in_flight`` bounds the
        unsettled events (1-1000, default 16); ``start_from`` (``"earliest"``,
        the default, or ``"latest"``) applies when this call creates the group.
        ``sub.cancel()``, from any thread, ends it.
        """
        req = subscribe_request(topic, group, consumer, max_in_flight, visibility_timeout, max_deliveries, start_from)
        return Subscription(self, req)

    def ack(self, topic: str, group: str, event_id: str) -> bool:
        """Acknowledges an event; False when it was not pending in the group (harmless)."""
        return self.events.Ack(events_pb2.AckRequest(topic=topic, group=group, event_id=event_id)).acked

    def nack(self, topic: str, group: str, event_id: str, retry_after: Optional[Seconds] = None) -> bool:
        """Gives an event back for redelivery after ``retry_after`` (default: at
        once); False when it was not pending in the group."""
        req = events_pb2.NackRequest(topic=topic, group=group, event_id=event_id)
        d = duration(retry_after)
        if d is not None:
            req.retry_after.CopyFrom(d)
        return self.events.Nack(req).requeued

    def outbox_status(self) -> events_pb2.GetOutboxStatusResponse:
        """The sidecar's Postgres outbox relay: ``enabled``, ``healthy``,
        ``last_error``, ``backlog``, ``lag``, ``published``, ``table``."""
        return self.events.GetOutboxStatus(events_pb2.GetOutboxStatusRequest())
