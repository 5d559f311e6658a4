"""Channel interceptors: bearer token, trace context, default deadline, typed errors."""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional, Sequence, Tuple

import grpc

from . import _tracing
from .errors import from_rpc_error


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _TypedOutcome:
    """Wraps the call/future of a unary call so that its failure surfaces as
    a SidecarError; everything else is the wrapped object's."""

    def __init__(self, inner: Any, addr: str) -> None:
        self._inner = inner
        self._addr = addr

    def result(self, timeout: Optional[float] = None) -> Any:
        try:
            return self._inner.result(timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, addr=self._addr) from None

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        exc = self._inner.exception(timeout)
        return from_rpc_error(exc, addr=self._addr) if exc is not None else None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._inner.add_done_callback(lambda _inner: fn(self))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` and the caller's trace context
    (when OpenTelemetry is in use) to every call, a default deadline to unary
    calls that have none (streams are sessions and get none), and turns
    unary failures into typed SidecarErrors."""

    def __init__(self, addr: str, token: Optional[str], default_timeout: Optional[float]) -> None:
        self._addr = addr
        self._auth: Optional[Tuple[str, str]] = ("authorization", f"Bearer {token}") if token else None
        self._timeout = default_timeout if default_timeout and default_timeout > 0 else None

    def _details(self, details: grpc.ClientCallDetails, unary: bool) -> grpc.ClientCallDetails:
        metadata: Sequence[Tuple[str, Any]] = list(details.metadata or ())
        if self._auth is not None and not any(k == "authorization" for k, _ in metadata):
            metadata = [*metadata, self._auth]
        metadata = _tracing.inject(metadata)
        timeout = details.timeout
        if timeout is None and unary:
            timeout = self._timeout
        return _CallDetails(
            details.method,
            timeout,
            metadata or None,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return _TypedOutcome(continuation(self._details(client_call_details, True), request), self._addr)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return _TypedOutcome(continuation(self._details(client_call_details, True), request_iterator), self._addr)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details, False), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details, False), request_iterator)
