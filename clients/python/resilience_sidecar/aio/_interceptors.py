"""grpc.aio interceptors: bearer token, trace context, default deadline, typed errors."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import grpc
import grpc.aio

from .. import _tracing
from ..errors import from_rpc_error


class _Base:
    def __init__(self, addr: str, token: Optional[str], default_timeout: Optional[float]) -> None:
        self._addr = addr
        self._auth: Optional[Tuple[str, str]] = ("authorization", f"Bearer {token}") if token else None
        self._timeout = default_timeout if default_timeout and default_timeout > 0 else None

    def _details(self, details: grpc.aio.ClientCallDetails, unary: bool) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        if self._auth is not None and not any(k == "authorization" for k, _ in metadata):
            metadata.append(self._auth)
        metadata = _tracing.inject(metadata)
        timeout = details.timeout
        if timeout is None and unary:
            timeout = self._timeout
        return grpc.aio.ClientCallDetails(
            details.method,
            timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )


class UnaryUnary(_Base, grpc.aio.UnaryUnaryClientInterceptor):
    """Unary calls: metadata, the default deadline, and failures raised as
    typed SidecarErrors when the call is awaited."""

    async def intercept_unary_unary(self, continuation, client_call_details, request) -> Any:
        call = await continuation(self._details(client_call_details, True), request)
        try:
            return await call
        except grpc.RpcError as e:
            raise from_rpc_error(e, addr=self._addr) from None


class StreamUnary(_Base, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator) -> Any:
        call = await continuation(self._details(client_call_details, True), request_iterator)
        try:
            return await call
        except grpc.RpcError as e:
            raise from_rpc_error(e, addr=self._addr) from None


class UnaryStream(_Base, grpc.aio.UnaryStreamClientInterceptor):
    """Server streams are sessions: metadata only, no default deadline."""

    async def intercept_unary_stream(self, continuation, client_call_details, request) -> Any:
        return await continuation(self._details(client_call_details, False), request)


class StreamStream(_Base, grpc.aio.StreamStreamClientInterceptor):
    """Bidirectional streams are sessions: metadata only, no default deadline."""

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator) -> Any:
        return await continuation(self._details(client_call_details, False), request_iterator)


def interceptors(addr: str, token: Optional[str], timeout: Optional[float]) -> list:
    return [cls(addr, token, timeout) for cls in (UnaryUnary, StreamUnary, UnaryStream, StreamStream)]
