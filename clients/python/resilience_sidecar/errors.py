"""Typed errors of the resilience sidecar.

Every failure the sidecar reports is a gRPC status carrying
``google.rpc.ErrorInfo`` (domain ``resilience.sidecar`` and a stable
``reason``), ``google.rpc.BadRequest`` field violations for
``INVALID_ARGUMENT`` and ``google.rpc.RetryInfo`` where retrying after a
delay is the right move. :func:`from_rpc_error` decodes such a status into a
:class:`SidecarError` subclass chosen by its reason (else by its code), so
callers can write ``except LeaseLost:`` instead of comparing strings.

Calls made through :class:`resilience_sidecar.Client` (its helpers and its
raw stubs alike) raise these errors instead of ``grpc.RpcError``: catch
:class:`SidecarError` (or a subclass). Its ``code`` is an attribute (a
``grpc.StatusCode``), and ``rpc_error`` keeps the original ``grpc.RpcError``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import grpc
from google.rpc import error_details_pb2, status_pb2

from . import reasons as _reasons

__all__ = [
    "ERROR_DOMAIN",
    "BreakerOpen",
    "BulkheadFull",
    "ClockSkew",
    "DeadlineExceeded",
    "IdempotencyKeyMismatch",
    "InvalidArgument",
    "LeaseLost",
    "LimitExceeded",
    "LimiterUnknown",
    "NotAcquired",
    "PermitUnknown",
    "RateLimited",
    "ReleaseNotConfirmed",
    "ReplicationShortfall",
    "ResilienceError",
    "SagaNotFound",
    "SagaStateConflict",
    "ShuttingDown",
    "SidecarError",
    "SidecarUnreachable",
    "StillInProgress",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnavailable",
    "TopicUnknown",
    "Unauthenticated",
    "Unavailable",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamUnknown",
    "error_class",
    "from_rpc_error",
]

#: The ErrorInfo domain of the sidecar's errors.
ERROR_DOMAIN = "resilience.sidecar"

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ResilienceError(Exception):
    """Base of every exception this package raises."""


class SidecarError(ResilienceError):
    """A failed call to the sidecar, with its decoded status details.

    Attributes:
        code: the gRPC status code (``grpc.StatusCode``).
        reason: the ErrorInfo reason in domain ``resilience.sidecar``
            (``"LEASE_LOST"``, ``"STORE_UNAVAILABLE"``, ...), or ``""``.
        message: the status message.
        retry_delay: the RetryInfo hint in seconds, or ``None``.
        violations: field name -> description, from BadRequest (empty when
            none).
        metadata: the ErrorInfo metadata (e.g. ``breaker`` and ``state`` for
            BREAKER_OPEN).
        rpc_error: the original ``grpc.RpcError``, when there is one.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str = "",
        message: str = "",
        retry_delay: float | None = None,
        violations: Mapping[str, str] | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        rpc_error: grpc.RpcError | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_delay = retry_delay
        self.violations: dict[str, str] = dict(violations or {})
        self.metadata: dict[str, str] = dict(metadata or {})
        self.rpc_error = rpc_error
        super().__init__(self._text())

    def _text(self) -> str:
        code = self.code.name if isinstance(self.code, grpc.StatusCode) else str(self.code)
        head = f"{code} {self.reason}" if self.reason else code
        text = f"{head}: {self.message}" if self.message else head
        if self.violations:
            text += " (" + "; ".join(f"{f}: {d}" for f, d in self.violations.items()) + ")"
        if self.retry_delay is not None:
            text += f" [retry after {self.retry_delay:g}s]"
        return text

    def __str__(self) -> str:
        return self._text()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r}, "
            f"message={self.message!r}, retry_delay={self.retry_delay!r}, violations={self.violations!r}, "
            f"metadata={self.metadata!r})"
        )

    def __reduce__(self) -> Any:  # picklable, e.g. across multiprocessing (rpc_error is dropped)
        extra = {k: v for k, v in self.__dict__.items() if k not in _CORE_FIELDS}
        return (
            _rebuild,
            (type(self), self.code, self.reason, self.message, self.retry_delay, self.violations, self.metadata),
            extra,
        )


_CORE_FIELDS = frozenset({"code", "reason", "message", "retry_delay", "violations", "metadata", "rpc_error"})


def _rebuild(cls: type[SidecarError], code, reason, message, retry_delay, violations, metadata) -> SidecarError:
    err = cls.__new__(cls)
    SidecarError.__init__(err, code, reason, message, retry_delay, violations, metadata=metadata)
    return err


class InvalidArgument(SidecarError):
    """INVALID_ARGUMENT: ``violations`` names every offending field."""


class UpstreamUnknown(InvalidArgument):
    """INVALID_ARGUMENT/UPSTREAM_UNKNOWN: not an upstream of the sidecar's config
    (or a path that leaves the upstream's base URL)."""

    REASON = _reasons.UPSTREAM_UNKNOWN


class LeaseLost(SidecarError):
    """FAILED_PRECONDITION/LEASE_LOST: the lease expired or is someone else's.

    The critical section (or the idempotent operation) may have run without
    its guarantee. Raised by the sidecar, and by the lock helpers when the
    lease was lost while held; ``lost_reason`` then tells why:
    ``"RENEWAL_OVERDUE"`` (no renewal confirmed before the lease's local
    deadline, measured on this process's monotonic clock), ``"LEASE_LOST"``,
    ``"MAX_HOLD"``, ``"SHUTDOWN"``, ``"STORE_UNAVAILABLE"`` or
    ``"STREAM_ENDED"``.
    """

    REASON = _reasons.LEASE_LOST
    lost_reason: str = "LEASE_LOST"


class IdempotencyKeyMismatch(SidecarError):
    """FAILED_PRECONDITION/IDEMPOTENCY_KEY_MISMATCH: key reused for another request."""

    REASON = _reasons.IDEMPOTENCY_KEY_MISMATCH


class PermitUnknown(SidecarError):
    """FAILED_PRECONDITION/PERMIT_UNKNOWN: a breaker permit never issued, already reported or expired."""

    REASON = _reasons.PERMIT_UNKNOWN


class ClockSkew(SidecarError):
    """FAILED_PRECONDITION/CLOCK_SKEW: a remote HLC timestamp too far ahead."""

    REASON = _reasons.CLOCK_SKEW


class LimitExceeded(SidecarError):
    """LIMIT_EXCEEDED: a bound was hit (a clock's range, a breaker count, a body size)."""

    REASON = _reasons.LIMIT_EXCEEDED


class SagaNotFound(SidecarError):
    """NOT_FOUND/SAGA_NOT_FOUND: no saga with that id (never started, or expired)."""

    REASON = _reasons.SAGA_NOT_FOUND


class SagaStateConflict(SidecarError):
    """SAGA_STATE_CONFLICT: the saga's state forbids the call (``metadata["state"]``
    gives it), or a saga id or step was reused with different content."""

    REASON = _reasons.SAGA_STATE_CONFLICT


class LimiterUnknown(SidecarError):
    """NOT_FOUND/LIMITER_UNKNOWN: the sidecar's config declares its rate limiters (``ratelimits``), and not this one."""

    REASON = _reasons.LIMITER_UNKNOWN


class TopicUnknown(SidecarError):
    """NOT_FOUND/TOPIC_UNKNOWN: the sidecar's config declares its topics (``events.topics``), and not this one."""

    REASON = _reasons.TOPIC_UNKNOWN


class Unavailable(SidecarError):
    """UNAVAILABLE: the sidecar, or what it depends on, cannot answer now.

    Retrying later (after ``retry_delay`` when set) is the right move.
    Without a reason it is the transport: :class:`SidecarUnreachable`.
    """


class SidecarUnreachable(Unavailable):
    """UNAVAILABLE without an ErrorInfo: the sidecar is not running or not
    reachable at the address (the message names it)."""


class StoreUnavailable(Unavailable):
    """UNAVAILABLE/STORE_UNAVAILABLE: the sidecar's store (Redis) did not answer.

    Its subclasses say more (``reason`` tells which): :class:`StoreFull`,
    :class:`StoreReadOnly`, :class:`ReplicationShortfall`. Retry after
    ``retry_delay``.
    """

    REASON = _reasons.STORE_UNAVAILABLE


class StoreFull(StoreUnavailable):
    """UNAVAILABLE/STORE_FULL: the store is out of memory (Redis maxmemory with noeviction)."""

    REASON = _reasons.STORE_FULL


class StoreReadOnly(StoreUnavailable):
    """UNAVAILABLE/STORE_READ_ONLY: the store refuses writes (a read-only replica, or MISCONF)."""

    REASON = _reasons.STORE_READ_ONLY


class ReplicationShortfall(StoreUnavailable):
    """UNAVAILABLE/REPLICATION_SHORTFALL: fewer store replicas acknowledged the write than required."""

    REASON = _reasons.REPLICATION_SHORTFALL


class ShuttingDown(Unavailable):
    """UNAVAILABLE/SHUTTING_DOWN: the sidecar is stopping; retry on another instance."""

    REASON = _reasons.SHUTTING_DOWN


class BreakerOpen(Unavailable):
    """UNAVAILABLE/BREAKER_OPEN: the breaker refused the call; ``retry_delay``
    (seconds) says when asking again makes sense, ``metadata["breaker"]``
    names the breaker."""

    REASON = _reasons.BREAKER_OPEN


class UpstreamUnavailable(Unavailable):
    """UNAVAILABLE/UPSTREAM_UNAVAILABLE: the upstream gave no response."""

    REASON = _reasons.UPSTREAM_UNAVAILABLE


class DeadlineExceeded(SidecarError):
    """DEADLINE_EXCEEDED: no answer within the call's deadline (a hung or
    frozen sidecar, or a deadline too short for the work)."""


class UpstreamTimeout(DeadlineExceeded):
    """DEADLINE_EXCEEDED/UPSTREAM_TIMEOUT: the upstream call timed out (it may have been processed)."""

    REASON = _reasons.UPSTREAM_TIMEOUT


class Unauthenticated(SidecarError):
    """UNAUTHENTICATED: the API token is missing or wrong."""


class NotAcquired(ResilienceError):
    """The lock wait ended without the lock (an outcome, not a sidecar failure).

    Attributes: ``key``, ``holder`` (the holder's owner label),
    ``fencing_token`` (the holder's) and ``expire_time`` (the holder's lease
    expiry, a UTC datetime, or None).
    """

    def __init__(self, key: str, holder: str = "", fencing_token: int = 0, expire_time: Any = None) -> None:
        self.key = key
        self.holder = holder
        self.fencing_token = fencing_token
        self.expire_time = expire_time
        super().__init__(f"lock {key!r} not acquired: held by {holder!r} (fencing token {fencing_token})")

    def __reduce__(self) -> Any:
        return (type(self), (self.key, self.holder, self.fencing_token, self.expire_time))


class ReleaseNotConfirmed(ResilienceError):
    """The lock's release was not confirmed before the lease's local deadline
    (or the client's call deadline, whichever came first).

    The lease was held while the critical section ran (otherwise
    :class:`LeaseLost` is raised instead); only its release is unknown. The
    lock frees itself when its lease expires, at the latest ``ttl`` after
    the last renewal. ``cause`` is the error of the release call, or None
    when it simply got no answer in time.
    """

    def __init__(
        self, key: str, fencing_token: int, waited: float, cause: Optional[BaseException] = None, what: str = "lock"
    ) -> None:
        self.key = key
        self.fencing_token = fencing_token
        self.waited = waited
        self.cause = cause
        #: "lock", or "permit" (of a bulkhead: ``key`` is its name).
        self.what = what
        why = f": {cause}" if cause is not None else ""
        super().__init__(
            f"release of {what} {key!r} (fencing token {fencing_token}) not confirmed within {waited:.2f}s{why}; "
            "the lease expires on its own"
        )

    def __reduce__(self) -> Any:
        return (type(self), (self.key, self.fencing_token, self.waited, None, self.what))


class RateLimited(ResilienceError):
    """A rate-limited call did not run: its cost did not fit within the wait
    (an outcome, not a sidecar failure), as resilience4j's
    ``RequestNotPermitted``.

    Attributes: ``limiter``, ``key``, ``cost``, ``retry_after`` (seconds
    until the cost fits if no one else takes from the key) and ``decision``
    (the whole :class:`RateDecision`, or None).
    """

    def __init__(self, limiter: str, key: str, cost: int, retry_after: float, decision: Any = None) -> None:
        self.limiter = limiter
        self.key = key
        self.cost = cost
        self.retry_after = retry_after
        self.decision = decision
        super().__init__(
            f"rate limited: limiter {limiter!r} key {key!r}: cost {cost} does not fit; retry after {retry_after:.3f}s"
        )

    def __reduce__(self) -> Any:
        return (type(self), (self.limiter, self.key, self.cost, self.retry_after, self.decision))


class BulkheadFull(ResilienceError):
    """The bulkhead wait ended without a permit (an outcome, not a sidecar
    failure), as resilience4j's ``BulkheadFullException``.

    Attributes: ``name``, ``held`` (live permits) and ``limit``.
    """

    def __init__(self, name: str, held: int = 0, limit: int = 0) -> None:
        self.name = name
        self.held = held
        self.limit = limit
        super().__init__(f"bulkhead {name!r} full: {held} of {limit} permits held")

    def __reduce__(self) -> Any:
        return (type(self), (self.name, self.held, self.limit))


class StillInProgress(ResilienceError, TimeoutError):
    """An idempotent operation was still run by another caller when the wait ended."""

    def __init__(self, key: str, waited: float) -> None:
        self.key = key
        self.waited = waited
        super().__init__(f"idempotency key {key!r} still in progress after waiting {waited:.1f}s")

    def __reduce__(self) -> Any:
        return (type(self), (self.key, self.waited))


def _reason_classes() -> "dict[str, type[SidecarError]]":
    """Every SidecarError subclass that declares a REASON, by reason."""
    out: dict[str, type[SidecarError]] = {}
    todo: list[type[SidecarError]] = [SidecarError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        reason = cls.__dict__.get("REASON")
        if reason:
            if reason in out:
                raise RuntimeError(f"two error classes for reason {reason}: {out[reason]} and {cls}")
            out[reason] = cls
    return out


#: The typed error of every ErrorInfo reason (tests check it covers
#: reasons.ALL_REASONS, the list generated from the sidecar's source).
_BY_REASON: dict[str, type[SidecarError]] = _reason_classes()

_BY_CODE: dict[grpc.StatusCode, type[SidecarError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def error_class(code: grpc.StatusCode, reason: str) -> type[SidecarError]:
    """The SidecarError subclass for a code and an ErrorInfo reason: the
    reason's class when the reason is known, else the code's (UNAVAILABLE
    without a reason is :class:`SidecarUnreachable`), else SidecarError."""
    cls = _BY_REASON.get(reason)
    if cls is not None:
        return cls
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        return SidecarUnreachable
    return _BY_CODE.get(code, SidecarError)


def from_rpc_error(err: BaseException, *, addr: str | None = None) -> BaseException:
    """Decodes a ``grpc.RpcError`` into the matching :class:`SidecarError`.

    An error that is already a SidecarError, or that carries no status
    (not a ``grpc.Call``), is returned unchanged. ``addr``, when given, is
    named in the message of a transport failure (UNAVAILABLE without a
    reason), so that "the sidecar is not running" is plain.
    """
    if isinstance(err, SidecarError) or not isinstance(err, grpc.RpcError):
        return err
    code_fn = getattr(err, "code", None)
    if not callable(code_fn):
        return err
    code = code_fn()
    details_fn = getattr(err, "details", None)
    message = (details_fn() if callable(details_fn) else "") or ""
    trailers_fn = getattr(err, "trailing_metadata", None)
    trailers = (trailers_fn() if callable(trailers_fn) else None) or ()

    reason = ""
    retry_delay: float | None = None
    violations: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for key, value in trailers:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            st = status_pb2.Status.FromString(value)
        except Exception:  # a malformed trailer: keep what the status says
            continue
        for detail in st.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == ERROR_DOMAIN:
                    reason = info.reason
                    metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                for v in bad.field_violations:
                    violations[v.field] = v.description

    if code == grpc.StatusCode.UNAVAILABLE and not reason and addr:
        message = f"sidecar at {addr} is not reachable (is it running?): {message}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and not reason and addr:
        message = f"no answer from the sidecar at {addr} within the call's deadline: {message}"
    cls = error_class(code, reason)
    return cls(code, reason, message, retry_delay, violations, metadata=metadata, rpc_error=err)
