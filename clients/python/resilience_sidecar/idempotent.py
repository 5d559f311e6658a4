"""``Client.idempotent``: run an operation once per key, return its result to every caller."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, TypeVar, Union

import grpc

from ._util import Seconds, durations, seconds
from .errors import LeaseLost, SidecarError, StillInProgress, Unavailable
from .v1 import idempotency_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Execution", "Result", "current_execution", "fingerprint", "JSON_CODEC_KEY"]

T = TypeVar("T")
Outcome = idempotency_pb2.CheckOrRecordIdempotencyResponse

#: Metadata key marking a result stored by the default JSON codec.
JSON_CODEC_KEY = "resilience-sidecar.codec"


@dataclasses.dataclass(frozen=True)
class Result:
    """A stored result exactly as the sidecar keeps it: bytes (e.g. a response
    body) and a small string map (e.g. ``{"status": "201"}``).

    An operation that returns a Result has it stored as is, and every caller
    gets a Result back. Any other return value goes through the JSON codec.
    """

    data: bytes = b""
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


def fingerprint(request: Union[bytes, str]) -> str:
    """``"sha256:" + hex digest`` of a request in canonical form.

    A retry of the same request must give the same fingerprint; a different
    request reusing the key must not (it is refused with
    :class:`IdempotencyKeyMismatch`).
    """
    if isinstance(request, str):
        request = request.encode("utf-8")
    return "sha256:" + hashlib.sha256(request).hexdigest()


def _json_encode(value: Any) -> Result:
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"the idempotent operation returned {type(value).__name__}, which the default JSON codec "
            "cannot store: return a resilience_sidecar.Result, a JSON value, or pass encode=/decode="
        ) from e
    return Result(data, {JSON_CODEC_KEY: "json"})


def _default_encode(value: Any) -> Result:
    return value if isinstance(value, Result) else _json_encode(value)


def _default_decode(result: Result) -> Any:
    if result.metadata.get(JSON_CODEC_KEY) == "json":
        return json.loads(result.data.decode("utf-8"))
    return result


def default_fingerprint(args: tuple, kwargs: dict) -> str:
    """The decorator's fingerprint when none is given: a hash of the call's
    arguments as canonical JSON."""
    try:
        canonical = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            "cannot fingerprint the arguments as JSON; pass fingerprint_fn= (e.g. for methods, whose self is "
            "not JSON)"
        ) from e
    return fingerprint(canonical)


class Execution:
    """One run of an operation under an idempotency key, as the operation sees
    it through :func:`current_execution`.

    ``attempt`` is 1 for the first run and more when this run takes over from
    an executor whose lease expired (it died or was too slow);
    ``recovery_point`` and ``recovery_data`` are the last checkpoint of that
    earlier run (``""`` and ``b""`` when there is none): resume after that
    phase instead of redoing it.
    """

    def __init__(self, client: "Client", key: str, lease_id: str, attempt: int, recovery_point: str, recovery_data: bytes):
        self.key = key
        self.attempt = attempt
        self.recovery_point = recovery_point
        self.recovery_data = recovery_data
        self._client = client
        self._lease_id = lease_id

    def checkpoint(self, recovery_point: str, data: bytes = b"") -> None:
        """Records that the operation finished phase ``recovery_point`` (1-512
        bytes) with ``data`` the next phases need (at most 64 KiB), and
        extends the lease. :class:`LeaseLost` means another run has taken
        over: stop."""
        self._client.idempotency.CheckpointIdempotency(
            idempotency_pb2.CheckpointIdempotencyRequest(
                key=self.key, lease_id=self._lease_id, recovery_point=recovery_point, data=data
            )
        )

    def __repr__(self) -> str:
        return f"Execution(key={self.key!r}, attempt={self.attempt}, recovery_point={self.recovery_point!r})"


_current: contextvars.ContextVar[Optional[Execution]] = contextvars.ContextVar(
    "resilience_sidecar_execution", default=None
)


def current_execution() -> Optional[Execution]:
    """The Execution of the idempotent operation running in this context, or
    None outside one."""
    return _current.get()


def _add_note(e: BaseException, note: str) -> None:
    if hasattr(e, "add_note"):  # Python 3.11+
        e.add_note(note)


def _retry_unavailable(call: Callable[[], T], retries: int) -> T:
    """Runs call, retrying UNAVAILABLE up to ``retries`` times after the
    sidecar's RetryInfo delay (100 ms when none)."""
    attempt = 0
    while True:
        try:
            return call()
        except Unavailable as e:
            if attempt >= retries:
                raise
            attempt += 1
            time.sleep(e.retry_delay if e.retry_delay else 0.1)


def run_idempotent(
    client: "Client",
    key: str,
    fingerprint: str,
    fn: Callable[[], Any],
    *,
    lease_ttl: Optional[Seconds] = None,
    retention: Optional[Seconds] = None,
    wait: Optional[Seconds] = 5.0,
    max_wait: Optional[Seconds] = 60.0,
    unavailable_retries: int = 3,
    encode: Optional[Callable[[Any], Result]] = None,
    decode: Optional[Callable[[Result], Any]] = None,
) -> Any:
    """See :meth:`Client.idempotent`."""
    enc = encode or _default_encode
    dec = decode or _default_decode
    per_call_wait = max(seconds(wait) or 0.0, 0.0)
    total = seconds(max_wait)
    start = time.monotonic()
    deadline = None if total is None else start + total
    while True:
        w = per_call_wait
        if deadline is not None:
            w = max(0.0, min(w, deadline - time.monotonic()))
        w = int(w * 1000) / 1000  # whole milliseconds
        req = idempotency_pb2.CheckOrRecordIdempotencyRequest(
            key=key,
            fingerprint=fingerprint,
            **durations(lease_ttl=lease_ttl, retention=retention, wait_timeout=w),
        )
        # The sidecar may wait up to w before answering: give the call that
        # much on top of the client's default deadline.
        timeout = None if client.timeout is None else w + client.timeout
        resp = _retry_unavailable(
            lambda: client.idempotency.CheckOrRecordIdempotency(req, timeout=timeout), unavailable_retries
        )
        if resp.outcome == Outcome.OUTCOME_COMPLETED:
            return dec(Result(resp.result.data, dict(resp.result.metadata)))
        if resp.outcome == Outcome.OUTCOME_STARTED:
            execution = Execution(
                client,
                key,
                resp.lease_id,
                resp.attempt,
                resp.checkpoint.recovery_point,
                resp.checkpoint.data,
            )
            return _execute(client, execution, fn, enc, dec, unavailable_retries)
        if resp.outcome != Outcome.OUTCOME_IN_PROGRESS:
            raise SidecarError(grpc.StatusCode.INTERNAL, "", f"unexpected idempotency outcome {resp.outcome}")
        if deadline is not None and time.monotonic() >= deadline:
            raise StillInProgress(key, time.monotonic() - start)
        if w <= 0:  # the sidecar answered at once: come back when it says
            pause = resp.retry_after.ToTimedelta().total_seconds() or 0.1
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)


def _execute(
    client: "Client",
    execution: Execution,
    fn: Callable[[], Any],
    enc: Callable[[Any], Result],
    dec: Callable[[Result], Any],
    retries: int,
) -> Any:
    """Runs fn as the owner of the key, then completes or releases it."""
    token = _current.set(execution)
    try:
        value = fn()
        result = enc(value)
    except BaseException as e:
        # The operation failed and (we take it) did not happen: give the key
        # back so that a retry runs it. A lost lease needs no release.
        try:
            _retry_unavailable(
                lambda: client.idempotency.ReleaseIdempotency(
                    idempotency_pb2.ReleaseIdempotencyRequest(key=execution.key, lease_id=execution._lease_id)
                ),
                retries,
            )
        except LeaseLost:
            pass
        except SidecarError as rerr:
            _add_note(
                e,
                f"resilience: release of idempotency key {execution.key!r} failed ({rerr}); "
                "it frees itself when its lease expires"
            )
        raise
    finally:
        _current.reset(token)

    try:
        _retry_unavailable(
            lambda: client.idempotency.CompleteIdempotency(
                idempotency_pb2.CompleteIdempotencyRequest(
                    key=execution.key,
                    lease_id=execution._lease_id,
                    result=idempotency_pb2.IdempotencyResult(data=result.data, metadata=dict(result.metadata)),
                )
            ),
            retries,
        )
    except LeaseLost as e:
        _add_note(
            e,
            f"resilience: {execution.key!r} ran but its lease was taken over meanwhile; "
            "the operation may have run twice (its value is in .result)"
        )
        e.result = dec(result)  # type: ignore[attr-defined]
        raise
    except SidecarError as e:
        _add_note(e, f"resilience: {execution.key!r} ran but its result was not recorded (its value is in .result)")
        e.result = dec(result)  # type: ignore[attr-defined]
        raise
    return dec(result)


def make_decorator(
    client: "Client",
    key: Optional[str],
    fingerprint_value: Optional[str],
    key_fn: Optional[Callable[..., str]],
    fingerprint_fn: Optional[Callable[..., str]],
    options: dict,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if key is None and key_fn is None:
        raise TypeError("idempotent needs a key or key_fn=")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = key if key is not None else key_fn(*args, **kwargs)  # type: ignore[misc]
            if fingerprint_value is not None:
                fp = fingerprint_value
            elif fingerprint_fn is not None:
                fp = fingerprint_fn(*args, **kwargs)
            else:
                fp = default_fingerprint(args, kwargs)
            return run_idempotent(client, k, fp, lambda: func(*args, **kwargs), **options)

        return wrapper

    return decorate
