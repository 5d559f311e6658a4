"""Python client of the resilience sidecar.

    from resilience_sidecar import Client

    client = Client()                        # $SIDECAR_ADDR or 127.0.0.1:50051
    with client.lock("orders/42", ttl=10, wait=5) as lease:
        ...                                  # lease.fencing_token, lease.lost
    receipt = client.idempotent("charge/42", fingerprint(body), lambda: charge(body))
    payments = client.breaker("payments")    # @payments, payments.call(fn), BreakerOpen
    r = client.execute_call("payments", "/charges", method="POST", body=b"...")
    with client.saga("order-42", "place-order") as saga:
        saga.add_compensation("reserve", upstream="inventory", path="/release/42")
        ...
    client.publish("orders.placed", body, idempotency_key="order-42/placed")
    with client.subscribe("orders.placed", "shipping", "shipping-1") as sub:
        sub.run(ship)                        # ack on return, nack on exception
    d = client.take("api", key="user/7")     # RateDecision: d.allowed, d.retry_after
    @client.rate_limited("api", key="user/7", wait=0.5)   # else raises RateLimited
    def search(q): ...
    with client.bulkhead("payments-db", 8, wait=2) as permit:   # else BulkheadFull
        ...                                  # permit.fencing_token, permit.lost

The generated stubs are in :mod:`resilience_sidecar.v1` (``lock_pb2``,
``lock_pb2_grpc``, ...); the client's raw stubs are ``client.locks``,
``client.idempotency``, ``client.clocks``, ``client.breakers``,
``client.sagas`` and ``client.events``. The asyncio client (grpc.aio) is
:class:`resilience_sidecar.aio.AsyncClient`, with the same helpers.
"""

from .breaker import Breaker, UpstreamResponse
from .bulkhead import Bulkhead
from .client import DEFAULT_ADDR, DEFAULT_TIMEOUT, ENV_ADDR, ENV_TOKEN, ENV_TOKEN_FILE, Client
from .clock import LamportClock
from .errors import (
    ERROR_DOMAIN,
    BreakerOpen,
    BulkheadFull,
    ClockSkew,
    DeadlineExceeded,
    IdempotencyKeyMismatch,
    InvalidArgument,
    LeaseLost,
    LimitExceeded,
    LimiterUnknown,
    NotAcquired,
    PermitUnknown,
    RateLimited,
    ReleaseNotConfirmed,
    ReplicationShortfall,
    ResilienceError,
    SagaNotFound,
    SagaStateConflict,
    ShuttingDown,
    SidecarError,
    SidecarUnreachable,
    StillInProgress,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
    TopicUnknown,
    Unauthenticated,
    Unavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnknown,
    from_rpc_error,
)
from .events import PublishResult, RetryAfter, Subscription
from .idempotent import Execution, Result, current_execution, fingerprint
from .lock import Lease, Lock, LockSession
from .ratelimit import RateDecision
from .saga import Saga, SagaTimeout, compensation

__version__ = "0.1.0"

__all__ = [
    "Breaker",
    "Bulkhead",
    "BulkheadFull",
    "Client",
    "DEFAULT_ADDR",
    "DEFAULT_TIMEOUT",
    "ENV_ADDR",
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "ERROR_DOMAIN",
    "BreakerOpen",
    "ClockSkew",
    "DeadlineExceeded",
    "Execution",
    "IdempotencyKeyMismatch",
    "InvalidArgument",
    "LamportClock",
    "Lease",
    "LeaseLost",
    "LimitExceeded",
    "LimiterUnknown",
    "Lock",
    "LockSession",
    "NotAcquired",
    "PermitUnknown",
    "PublishResult",
    "RateDecision",
    "RateLimited",
    "ReleaseNotConfirmed",
    "ReplicationShortfall",
    "ResilienceError",
    "Result",
    "RetryAfter",
    "Saga",
    "SagaNotFound",
    "SagaStateConflict",
    "SagaTimeout",
    "ShuttingDown",
    "SidecarError",
    "SidecarUnreachable",
    "StillInProgress",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnavailable",
    "Subscription",
    "TopicUnknown",
    "Unauthenticated",
    "Unavailable",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamUnknown",
    "compensation",
    "current_execution",
    "fingerprint",
    "from_rpc_error",
]
