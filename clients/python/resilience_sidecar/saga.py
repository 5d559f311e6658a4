"""``Client.saga``: a saga this process orchestrates, recorded write-ahead in
the sidecar's saga log, Temporal-style (``add_compensation`` before each
step; compensations run newest first when the saga fails)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Tuple, Union

from ._util import Seconds, durations, seconds
from .breaker import Headers
from .errors import ResilienceError, SidecarError
from .v1 import breaker_pb2, saga_pb2

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Saga", "SagaTimeout", "compensation", "saga_state_name"]

_STATE_NAMES: "dict[int, str]" = {
    saga_pb2.SAGA_STATE_RUNNING: "running",
    saga_pb2.SAGA_STATE_COMPLETED: "completed",
    saga_pb2.SAGA_STATE_COMPENSATING: "compensating",
    saga_pb2.SAGA_STATE_COMPENSATED: "compensated",
    saga_pb2.SAGA_STATE_COMPENSATION_FAILED: "compensation-failed",
}
#: States a saga leaves only by an operator's RetryCompensation.
TERMINAL = frozenset(
    {saga_pb2.SAGA_STATE_COMPLETED, saga_pb2.SAGA_STATE_COMPENSATED, saga_pb2.SAGA_STATE_COMPENSATION_FAILED}
)
#: How often :meth:`Saga.wait` polls GetSaga (seconds).
POLL_INTERVAL = 0.1


def saga_state_name(state: int) -> str:
    """``"running"``, ``"completed"``, ``"compensating"``, ``"compensated"``,
    ``"compensation-failed"`` (or ``"unspecified"``) for a SagaState."""
    return _STATE_NAMES.get(state, "unspecified")


class SagaTimeout(ResilienceError, TimeoutError):
    """:meth:`Saga.wait` ended before the saga reached a final state."""

    def __init__(self, saga_id: str, state: str, waited: float) -> None:
        self.saga_id = saga_id
        self.state = state
        self.waited = waited
        super().__init__(f"saga {saga_id!r} still {state} after waiting {waited:.1f}s")


def compensation(
    upstream: str,
    path: str = "/",
    *,
    method: str = "POST",
    query: str = "",
    headers: Headers = None,
    body: Union[bytes, str] = b"",
) -> saga_pb2.Compensation:
    """The HTTP call that undoes a step, made by the sidecar to ``upstream``
    (a name of its config) with ``Idempotency-Key: <saga_id>:<step>``. It
    must be idempotent and succeed (2xx) when there is nothing to undo."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    return saga_pb2.Compensation(
        upstream=upstream,
        method=method,
        path=path,
        query=query,
        headers=[breaker_pb2.HttpHeader(name=k, value=v) for k, v in pairs],
        body=body.encode("utf-8") if isinstance(body, str) else bytes(body),
    )


def reason_text(reason: str) -> str:
    """``reason`` as the sidecar accepts it: no control characters, at most 512 bytes of UTF-8."""
    clean = "".join(" " if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0) else c for c in reason)
    data = clean.encode("utf-8", errors="replace")[:512]
    return data.decode("utf-8", errors="ignore")


def failure_reason(exc: BaseException) -> str:
    return reason_text(f"{type(exc).__name__}: {exc}")


class _SagaBase:
    """What Saga and AsyncSaga share: identity and request building."""

    def __init__(
        self,
        saga_id: str,
        name: str,
        timeout: Optional[Seconds],
        metadata: Optional[Mapping[str, str]],
    ) -> None:
        self.saga_id = saga_id
        self.name = name
        self.timeout = timeout
        self.metadata = dict(metadata or {})
        #: Steps recorded through this object, in order (name, index).
        self.steps: list[Tuple[str, int]] = []
        self.started = False

    def start_request(self) -> saga_pb2.StartSagaRequest:
        return saga_pb2.StartSagaRequest(
            saga_id=self.saga_id, name=self.name, metadata=self.metadata, **durations(timeout=self.timeout)
        )

    def step_request(
        self, step: str, comp: Optional[saga_pb2.Compensation], kwargs: Mapping[str, Any]
    ) -> saga_pb2.RecordStepRequest:
        if comp is None:
            if "upstream" not in kwargs:
                raise TypeError("add_compensation needs a Compensation or upstream= (and path=, method=, ...)")
            comp = compensation(**kwargs)
        elif kwargs:
            raise TypeError("pass either a Compensation or its fields, not both")
        return saga_pb2.RecordStepRequest(saga_id=self.saga_id, step=step, compensation=comp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.saga_id!r}, {self.name!r}, steps={len(self.steps)})"


class Saga(_SagaBase):
    """A saga from :meth:`Client.saga`. Record each step's compensation
    *before* doing the step (write-ahead), as Temporal's
    ``saga.add_compensation``; when the saga fails the sidecar runs the
    recorded compensations newest first (HTTP calls to upstreams of its
    config)::

        with client.saga("order-42", "place-order", timeout=600) as saga:
            saga.add_compensation("reserve", upstream="inventory", path="/release/42")
            inventory.reserve(42)
            saga.step("charge", payments.charge, 42,
                      compensation=compensation("payments", "/refund/42"))
        # the block returned: CompleteSaga; it raised: AbortSaga, and the exception propagates

    A step recorded is compensated when the saga aborts, even if its
    action failed or never ran (its outcome may be unknown), so a
    compensation must be idempotent and succeed when there is nothing to
    undo. If this process dies, the sidecar compensates the saga after its
    ``timeout`` (default 1 h). ``saga.wait()`` returns once the saga
    completed or its compensations ended. Steps run one at a time: a Saga
    is not for concurrent use.
    """

    def __init__(
        self,
        client: "Client",
        saga_id: str,
        name: str,
        *,
        timeout: Optional[Seconds] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(saga_id, name, timeout, metadata)
        self._client = client

    def start(self) -> "Saga":
        """Starts the saga (or finds it: StartSaga is idempotent on id and
        name). A saga id taken by another name raises :class:`SagaStateConflict`."""
        self._client.sagas.StartSaga(self.start_request())
        self.started = True
        return self

    def add_compensation(
        self, step: str, compensation: Optional[saga_pb2.Compensation] = None, **fields: Any
    ) -> int:
        """Records ``step`` with the call that undoes it, before you do the
        step; returns its index (from 1). Pass a :func:`compensation`, or its
        fields (``upstream=``, ``path=``, ``method=``, ``query=``,
        ``headers=``, ``body=``). Recording the same step again with the same
        compensation is a no-op. Raises :class:`SagaStateConflict` when the
        saga is no longer running (it timed out or was aborted): do not do
        the step."""
        resp = self._client.sagas.RecordStep(self.step_request(step, compensation, fields))
        self.steps.append((step, resp.index))
        return resp.index

    def step(
        self,
        step: str,
        fn: Callable[..., Any],
        *args: Any,
        compensation: Optional[saga_pb2.Compensation] = None,
        **kwargs: Any,
    ) -> Any:
        """Records ``step`` with ``compensation`` (write-ahead), then returns
        ``fn(*args, **kwargs)``. When ``fn`` raises, the saga is aborted
        (compensated newest first, this step included) and the exception
        propagates."""
        if compensation is None:
            raise TypeError("step() needs compensation=")
        self.add_compensation(step, compensation)
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            self._abort_after(e)
            raise

    def complete(self) -> saga_pb2.Saga:
        """Ends the saga successfully: nothing is compensated. Raises
        :class:`SagaStateConflict` when it timed out or was aborted meanwhile."""
        return self._client.sagas.CompleteSaga(saga_pb2.CompleteSagaRequest(saga_id=self.saga_id)).saga

    def abort(self, reason: str = "") -> saga_pb2.Saga:
        """Has the sidecar compensate the recorded steps, newest first, in
        the background (:meth:`wait` for the end). Idempotent."""
        return self._client.sagas.AbortSaga(saga_pb2.AbortSagaRequest(saga_id=self.saga_id, reason=reason_text(reason))).saga

    def compensate(self, reason: str = "", *, wait: Optional[Seconds] = None) -> saga_pb2.Saga:
        """Temporal's name for :meth:`abort`; with ``wait``, also waits (up
        to that long) until the compensations ended."""
        saga = self.abort(reason)
        return self.wait(wait) if wait is not None else saga

    def get(self) -> saga_pb2.Saga:
        """The saga with its steps and each compensation's status (GetSaga)."""
        return self._client.sagas.GetSaga(saga_pb2.GetSagaRequest(saga_id=self.saga_id)).saga

    @property
    def state(self) -> str:
        """The saga's state as a name (asks the sidecar): see :func:`saga_state_name`."""
        return saga_state_name(self.get().state)

    def wait(self, timeout: Optional[Seconds] = 60.0) -> saga_pb2.Saga:
        """Polls until the saga is completed, compensated or
        compensation-failed, and returns it; :class:`SagaTimeout` after
        ``timeout`` (None: no bound)."""
        limit = seconds(timeout)
        start = time.monotonic()
        while True:
            saga = self.get()
            if saga.state in TERMINAL:
                return saga
            waited = time.monotonic() - start
            if limit is not None and waited >= limit:
                raise SagaTimeout(self.saga_id, saga_state_name(saga.state), waited)
            time.sleep(POLL_INTERVAL)  # real time: the sidecar compensates in the background

    def _abort_after(self, exc: BaseException) -> None:
        try:
            self.abort(failure_reason(exc))
        except SidecarError as aerr:
            if hasattr(exc, "add_note"):
                exc.add_note(f"resilience: abort of saga {self.saga_id!r} failed: {aerr}")

    def __enter__(self) -> "Saga":
        if not self.started:
            self.start()
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            self.complete()
            return
        self._abort_after(exc)

