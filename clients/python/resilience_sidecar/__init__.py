"""Python client of the resilience sidecar.

    from resilience_sidecar import Client

    client = Client()                        # $SIDECAR_ADDR or 127.0.0.1:50051
    with client.lock("orders/42", ttl=10, wait=5) as lease:
        ...                                  # lease.fencing_token, lease.lost
    receipt = client.idempotent("charge/42", fingerprint(body), lambda: charge(body))
    client.publish("orders.placed", body, idempotency_key="order-42/placed")
    with client.subscribe("orders.placed", "shipping", "shipping-1") as sub:
        sub.run(ship)                        # ack on return, nack on exception

The generated stubs are in :mod:`resilience_sidecar.v1` (``lock_pb2``,
``lock_pb2_grpc``, ...); the client's raw stubs are ``client.locks``,
``client.idempotency``, ``client.clocks``, ``client.breakers``,
``client.sagas`` and ``client.events``.
"""

from .client import DEFAULT_ADDR, DEFAULT_TIMEOUT, ENV_ADDR, ENV_TOKEN, ENV_TOKEN_FILE, Client
from .errors import (
    ERROR_DOMAIN,
    BreakerOpen,
    ClockSkew,
    DeadlineExceeded,
    IdempotencyKeyMismatch,
    InvalidArgument,
    LeaseLost,
    LimitExceeded,
    NotAcquired,
    PermitUnknown,
    ResilienceError,
    SagaNotFound,
    SagaStateConflict,
    ShuttingDown,
    SidecarError,
    StillInProgress,
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
from .lock import Lease, LockSession

__version__ = "0.1.0"

__all__ = [
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
    "Lease",
    "LeaseLost",
    "LimitExceeded",
    "LockSession",
    "NotAcquired",
    "PermitUnknown",
    "ResilienceError",
    "PublishResult",
    "Result",
    "RetryAfter",
    "SagaNotFound",
    "SagaStateConflict",
    "ShuttingDown",
    "SidecarError",
    "StillInProgress",
    "StoreUnavailable",
    "Subscription",
    "TopicUnknown",
    "Unauthenticated",
    "Unavailable",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamUnknown",
    "current_execution",
    "fingerprint",
    "from_rpc_error",
]
