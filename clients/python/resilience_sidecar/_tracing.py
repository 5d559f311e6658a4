"""Optional OpenTelemetry context propagation.

When ``opentelemetry-api`` is importable (``pip install
resilience-sidecar[otel]``, or any app that uses OpenTelemetry), every call
to the sidecar carries the caller's trace context as gRPC metadata, written
by the globally configured propagator (W3C ``traceparent`` and ``baggage``
by default). The sidecar continues that trace, so an upstream it calls
(``ExecuteCall``) receives a ``traceparent`` of the app's trace. Without the
package, or without a span in the current context, nothing is added.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

_propagate: Any
try:  # an optional dependency: the API package only
    from opentelemetry import propagate as _propagate
except ImportError:  # exercised by a test in a subprocess
    _propagate = None

__all__ = ["ENABLED", "inject"]

#: True when opentelemetry-api is importable.
ENABLED = _propagate is not None


def inject(metadata: Sequence[Tuple[str, Any]]) -> List[Tuple[str, Any]]:
    """``metadata`` plus the current context's propagation headers (none when
    there is no active span, or no OpenTelemetry); headers the caller set
    itself are kept."""
    out = list(metadata)
    if _propagate is None:
        return out
    carrier: dict = {}
    try:
        _propagate.inject(carrier)
    except Exception:  # a broken propagator must not break the call
        return out
    if not carrier:
        return out
    given = {k for k, _ in out}
    for key, value in carrier.items():
        key = key.lower()  # gRPC metadata keys are lower case
        if key not in given:
            out.append((key, value))
    return out
