"""The sidecar client: a channel with auth and deadlines, the raw stubs and the helpers."""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._interceptors import ClientInterceptor
from ._util import Seconds, seconds
from .errors import DeadlineExceeded, SidecarError, Unavailable
from .idempotent import make_decorator, run_idempotent
from .lock import LockSession
from .v1 import breaker_pb2_grpc, clock_pb2_grpc, idempotency_pb2_grpc, lock_pb2_grpc, saga_pb2_grpc

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

F = TypeVar("F", bound=Callable[..., Any])


def _resolve_token(token: Optional[str]) -> Optional[str]:
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
    ``locks``, ``idempotency``, ``clocks``, ``breakers``, ``sagas``, ``health``.
    Helpers: :meth:`lock`, :meth:`idempotent`, :meth:`wait_ready`.

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
        token = _resolve_token(token)
        # The sidecar is local: no proxy, and reconnect quickly after it
        # restarts (gRPC's default backoff grows to two minutes).
        defaults = [
            ("grpc.enable_http_proxy", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        given = {name for name, _ in options}
        channel_options = [o for o in defaults if o[0] not in given] + list(options)
        self._raw_channel = grpc.insecure_channel(self.addr, options=channel_options)
        self.channel: grpc.Channel = grpc.intercept_channel(
            self._raw_channel, ClientInterceptor(self.addr, token, self.timeout)
        )
        self.locks = lock_pb2_grpc.LockServiceStub(self.channel)
        self.idempotency = idempotency_pb2_grpc.IdempotencyServiceStub(self.channel)
        self.clocks = clock_pb2_grpc.ClockServiceStub(self.channel)
        self.breakers = breaker_pb2_grpc.BreakerServiceStub(self.channel)
        self.sagas = saga_pb2_grpc.SagaServiceStub(self.channel)
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
        is reachable), polling every 100 ms. Raises :class:`Unavailable` (or
        :class:`DeadlineExceeded`) when it does not within ``timeout``."""
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
        raise Unavailable(
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
    ) -> LockSession:
        """Holds ``key`` for the duration of a ``with`` block::

            with client.lock("orders/42", ttl=10, wait=5, owner="worker-a") as lease:
                db.write(..., fence=lease.fencing_token)
                lease.check()          # raises LeaseLost if the lease was lost

        A HoldLock session: the sidecar renews the lease about every ttl/3
        while the block runs and releases it at exit (or when this process
        dies). ``ttl`` (default 10 s) bounds how long the lock outlives a
        vanished process; ``wait`` (default 0: try once) is how long to wait
        for a held lock; ``max_hold`` makes the sidecar end the session after
        that long. Durations are seconds or timedeltas.

        Raises :class:`NotAcquired` when the wait ends without the lock, and
        :class:`LeaseLost` at exit when the lease was lost while the block
        ran (``lease.lost`` is set the moment the sidecar reports it).
        """
        return LockSession(self, key, ttl=ttl, wait=wait, owner=owner, max_hold=max_hold)

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

