"""Client.breaker (guard around any function), Client.execute_call and trace
propagation, against the real sidecar calling a real HTTP upstream."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from conftest import Rig
from resilience_sidecar import BreakerOpen, Client, UpstreamUnknown
from upstream import traceparent_trace_id


class Flaky:
    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, fail: bool) -> str:
        self.runs += 1
        if fail:
            raise ConnectionError("dependency down")
        return "ok"


@pytest.mark.scenario("breaker-guard-opens-and-recovers")
def test_guard_opens_on_failures_and_a_success_closes_it(rig: Rig) -> None:
    guarded = rig.client.breaker("guarded")  # consecutive_failures 3, open 1 s
    flaky = Flaky()
    call = guarded(flaky)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            call(True)
    assert flaky.runs == 3
    with pytest.raises(BreakerOpen) as info:
        call(False)
    assert flaky.runs == 3, "a refused call must not run"
    err = info.value
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "BREAKER_OPEN"
    assert err.retry_delay is not None and 0 < err.retry_delay <= 1.0
    assert err.metadata == {"breaker": "guarded", "state": "open"}
    assert guarded.current_state == "open"

    time.sleep(err.retry_delay)  # real time: the open duration passes
    assert guarded.call(flaky, False) == "ok"  # the half-open probe succeeds
    assert flaky.runs == 4
    assert guarded.current_state == "closed"
    with guarded.calling():  # and calls flow again
        pass


def test_excluded_and_interrupting_exceptions_do_not_count(rig: Rig) -> None:
    guarded = rig.client.breaker("guarded", exclude=[ValueError, lambda e: "ignore me" in str(e)])
    for exc in (ValueError("bad input"), RuntimeError("ignore me"), KeyboardInterrupt()):
        for _ in range(3):
            with pytest.raises(type(exc)):
                with guarded.calling():
                    raise exc
    info = guarded.info()
    assert guarded.current_state == "closed" and info.counts.consecutive_failures == 0


def test_guard_refuses_async_functions(rig: Rig) -> None:
    async def f() -> None: ...

    with pytest.raises(TypeError):
        rig.client.breaker("guarded")(f)


@pytest.mark.scenario("execute-call")
def test_execute_call_returns_the_upstreams_response(rig: Rig) -> None:
    rig.upstream.answer("/orders", 201, b'{"id": 42}')
    r = rig.client.execute_call(
        "test", "/orders", method="POST", query="a=1",
        headers={"Content-Type": "application/json", "X-Tenant": "t1"},
        body='{"qty": 2}', idempotency_key="order-42", timeout=5,
    )
    assert (r.status, r.ok, r.json(), r.attempts, r.breaker_state) == (201, True, {"id": 42}, 1, "closed")
    assert r.header("x-upstream") == "test" and r.header("missing") is None
    seen = rig.upstream.requests[-1]
    assert (seen.method, seen.path, seen.body) == ("POST", "/orders?a=1", b'{"qty": 2}')
    assert seen.headers["x-tenant"] == "t1" and seen.headers["idempotency-key"] == "order-42"

    rig.upstream.answer("/broken", 500, b"boom")
    r = rig.client.execute_call("test", "/broken")
    assert (r.status, r.ok, r.text) == (500, False, "boom")  # a status is a result, not an error

    with pytest.raises(UpstreamUnknown) as info:
        rig.client.execute_call("nope", "/")
    assert info.value.violations


def test_execute_call_on_an_open_breaker_is_breaker_open(rig: Rig) -> None:
    from resilience_sidecar import UpstreamUnavailable

    with pytest.raises(UpstreamUnavailable):  # nothing listens: one failure trips it
        rig.client.execute_call("tripwire", "/")
    with pytest.raises(BreakerOpen) as info:
        rig.client.execute_call("tripwire", "/")
    assert info.value.retry_delay is not None and info.value.retry_delay > 0


@pytest.mark.scenario("tracing-propagates-traceparent")
def test_execute_call_carries_the_apps_trace_to_the_upstream(rig: Rig) -> None:
    tracer = TracerProvider().get_tracer("app")
    with tracer.start_as_current_span("checkout") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        r = rig.client.execute_call("test", "/traced")
    assert r.status == 200
    seen = [q for q in rig.upstream.requests if q.path == "/traced"]
    assert len(seen) == 1
    assert traceparent_trace_id(seen[0].headers.get("traceparent")) == trace_id

    rig.client.execute_call("test", "/untraced")  # no span: no traceparent
    assert "traceparent" not in [q for q in rig.upstream.requests if q.path == "/untraced"][0].headers


def test_the_client_works_without_opentelemetry(rig: Rig) -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if not installed\n"
        "from resilience_sidecar import Client, _tracing\n"
        "assert not _tracing.ENABLED\n"
        f"c = Client({rig.sidecar.addr!r})\n"
        "print(c.execute_call('test', '/no-otel').status)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "200"


def test_breaker_decorator_keeps_the_name(client: Client) -> None:
    @client.breaker("named")
    def charge(order: str) -> str:
        """Charges."""
        return order

    assert charge.__name__ == "charge" and charge.__doc__ == "Charges."
