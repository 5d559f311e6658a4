"""``Client.breaker`` (a circuit breaker around any function, in pybreaker's
style: AllowCall, run, ReportCall) and ``Client.execute_call`` (the sidecar
calls a configured HTTP upstream through its breaker)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from google.protobuf.duration_pb2 import Duration

from ._util import Seconds, durations, seconds
from .errors import BreakerOpen, SidecarError
from .v1 import breaker_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Breaker", "UpstreamResponse", "state_name"]

log = logging.getLogger("resilience_sidecar")

F = TypeVar("F", bound=Callable[..., Any])

#: Bound (seconds) on the ReportCall made after the function returned.
REPORT_TIMEOUT = 5.0

Outcome = breaker_pb2.CallOutcome
Excluded = Union[type, Callable[[BaseException], bool]]
Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]], None]

_STATE_NAMES: "dict[int, str]" = {
    breaker_pb2.BREAKER_STATE_CLOSED: "closed",
    breaker_pb2.BREAKER_STATE_OPEN: "open",
    breaker_pb2.BREAKER_STATE_HALF_OPEN: "half-open",
}


def state_name(state: int) -> str:
    """``"closed"``, ``"open"``, ``"half-open"`` (or ``"unspecified"``) for a BreakerState."""
    return _STATE_NAMES.get(state, "unspecified")


@dataclasses.dataclass(frozen=True)
class UpstreamResponse:
    """What :meth:`Client.execute_call` returns: the upstream's HTTP answer
    (any status is a result, not an error)."""

    status: int
    #: Header fields in order; a name may repeat.
    headers: List[Tuple[str, str]]
    body: bytes
    #: HTTP attempts the sidecar made (retries included).
    attempts: int
    #: The upstream's breaker after the call: "closed", "open" or "half-open".
    breaker_state: str

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive)."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default


def execute_call_request(
    upstream: str,
    path: str,
    method: str,
    query: str,
    headers: Headers,
    body: Union[bytes, str],
    timeout: Optional[Seconds],
    idempotency_key: str,
) -> breaker_pb2.ExecuteCallRequest:
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    return breaker_pb2.ExecuteCallRequest(
        upstream=upstream,
        method=method,
        path=path,
        query=query,
        headers=[breaker_pb2.HttpHeader(name=k, value=v) for k, v in pairs],
        body=body.encode("utf-8") if isinstance(body, str) else bytes(body),
        idempotency_key=idempotency_key,
        **durations(timeout=timeout),
    )


def execute_call_deadline(timeout: Optional[Seconds], client_timeout: Optional[float]) -> Optional[float]:
    """The gRPC deadline of an ExecuteCall: the call's own timeout plus the
    client's (the sidecar needs the time to answer), else the client's."""
    t = seconds(timeout)
    if t is None:
        return client_timeout
    return t + (client_timeout if client_timeout is not None else 0.0)


def upstream_response(resp: breaker_pb2.ExecuteCallResponse) -> UpstreamResponse:
    return UpstreamResponse(
        status=resp.status,
        headers=[(h.name, h.value) for h in resp.headers],
        body=resp.body,
        attempts=resp.attempts,
        breaker_state=state_name(resp.breaker_state),
    )


def open_error(breaker: str, resp: breaker_pb2.AllowCallResponse) -> BreakerOpen:
    """The error of a refused call: the same UNAVAILABLE/BREAKER_OPEN with a
    retry delay that ExecuteCall returns."""
    state = state_name(resp.state)
    what = "open" if state != "half-open" else "half-open with every probe slot taken"
    return BreakerOpen(
        grpc.StatusCode.UNAVAILABLE,
        "BREAKER_OPEN",
        f"breaker {breaker!r} is {what}: the call was not made",
        resp.retry_after.ToTimedelta().total_seconds(),
        metadata={"breaker": breaker, "state": state},
    )


class _Policy:
    """What Breaker and AsyncBreaker share: the requests and the outcome rule."""

    def __init__(self, name: str, exclude: Sequence[Excluded], permit_ttl: Optional[Seconds]) -> None:
        self.name = name
        self.exclude = tuple(exclude)
        self.permit_ttl = permit_ttl

    def allow_request(self) -> breaker_pb2.AllowCallRequest:
        return breaker_pb2.AllowCallRequest(breaker=self.name, **durations(permit_ttl=self.permit_ttl))

    def report_request(self, permit_id: str, outcome: Any, started: float) -> breaker_pb2.ReportCallRequest:
        took = Duration()
        took.FromNanoseconds(int(max(0.0, time.monotonic() - started) * 1e9))
        return breaker_pb2.ReportCallRequest(permit_id=permit_id, outcome=outcome, duration=took)

    def outcome(self, exc: Optional[BaseException]) -> int:
        """SUCCESS when the function returned; IGNORED for an excluded
        exception or one that is not an ``Exception`` (KeyboardInterrupt,
        cancellation: the caller gave up, the dependency is not to blame);
        FAILURE otherwise."""
        if exc is None:
            return Outcome.CALL_OUTCOME_SUCCESS
        if not isinstance(exc, Exception):
            return Outcome.CALL_OUTCOME_IGNORED
        for ex in self.exclude:
            if isinstance(ex, type):
                if isinstance(exc, ex):
                    return Outcome.CALL_OUTCOME_IGNORED
            elif ex(exc):
                return Outcome.CALL_OUTCOME_IGNORED
        return Outcome.CALL_OUTCOME_FAILURE


def report_failed(name: str, err: BaseException) -> None:
    # The sidecar counts a permit never reported as a failure when it
    # expires, so a lost report is not lost information about the call.
    log.warning("breaker %r: ReportCall failed (the permit counts as a failure when it expires): %s", name, err)


class Breaker(_Policy):
    """The sidecar's circuit breaker ``name`` around your own calls, from
    :meth:`Client.breaker`, as pybreaker's ``CircuitBreaker``::

        payments = client.breaker("payments", exclude=[ValueError])

        @payments
        def charge(order): ...                 # raises BreakerOpen while the breaker is open

        payments.call(charge, order)           # the same, without the decorator
        with payments.calling():               # the same, around a block
            ...

    Each call asks the sidecar first (AllowCall); a refused call does not
    run and raises :class:`BreakerOpen`, whose ``retry_delay`` says when
    asking again makes sense. An allowed call runs, and its outcome and
    duration are reported (ReportCall): returning is a success, raising a
    failure, except for ``exclude`` (exception classes, or predicates on the
    exception, as pybreaker's) and exceptions that are not ``Exception``
    (KeyboardInterrupt), which are reported as ignored. The function's
    exception always propagates. A failed report is logged and does not
    change the result (the permit counts as a failure when it expires).

    The policy (thresholds, open duration, local or shared) comes from the
    sidecar's config; ``permit_ttl`` bounds how long the sidecar waits for
    a report (default 60 s): set it above your call's longest duration.
    """

    def __init__(
        self, client: "Client", name: str, *, exclude: Sequence[Excluded] = (), permit_ttl: Optional[Seconds] = None
    ) -> None:
        super().__init__(name, exclude, permit_ttl)
        self._client = client

    def _allow(self) -> str:
        resp = self._client.breakers.AllowCall(self.allow_request())
        if not resp.allowed:
            raise open_error(self.name, resp)
        return resp.permit_id

    def _report(self, permit_id: str, exc: Optional[BaseException], started: float) -> None:
        timeout = min(REPORT_TIMEOUT, self._client.timeout or REPORT_TIMEOUT)
        try:
            self._client.breakers.ReportCall(self.report_request(permit_id, self.outcome(exc), started), timeout=timeout)
        except SidecarError as e:
            report_failed(self.name, e)

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Runs the ``with`` block as one guarded call."""
        permit = self._allow()
        started = time.monotonic()
        try:
            yield
        except BaseException as e:
            self._report(permit, e, started)
            raise
        self._report(permit, None, started)

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs ``func(*args, **kwargs)`` as one guarded call and returns its result."""
        with self.calling():
            return func(*args, **kwargs)

    def __call__(self, func: F) -> F:
        """Decorates ``func`` so that every call is guarded."""
        if inspect.iscoroutinefunction(func):
            raise TypeError("Breaker guards plain functions; for async def use AsyncClient.breaker")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(func, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def info(self) -> breaker_pb2.Breaker:
        """The breaker's state, policy and counts (GetBreaker)."""
        return self._client.breakers.GetBreaker(breaker_pb2.GetBreakerRequest(breaker=self.name)).breaker

    @property
    def current_state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (asks the sidecar), as pybreaker's."""
        return state_name(self.info().state)

    def reset(self, reason: str = "") -> None:
        """Forces the breaker closed with empty counts (an operator's action; the sidecar logs it)."""
        self._client.breakers.ResetBreaker(breaker_pb2.ResetBreakerRequest(breaker=self.name, reason=reason))

    def __repr__(self) -> str:
        return f"Breaker({self.name!r})"
