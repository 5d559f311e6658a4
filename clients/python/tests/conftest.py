"""Session fixtures: one real redis-server and one real sidecar for the whole
run; `start_sidecar` starts more (e.g. to stop or pause one) and stops them
after the test; `upstream` is a real HTTP server for the sidecar to call.
The scenario check (tests/scenarios.py) fails a full run in which an id of
clients/scenarios.txt has no passing test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

import scenarios
from harness import Redis, Sidecar, free_port
from upstream import Upstream
from resilience_sidecar import Client


def pytest_configure(config: pytest.Config) -> None:
    scenarios.register(config)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    redis = Redis(tmp_path_factory.mktemp("redis"))
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def sidecar(redis_server: Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    sc = Sidecar(redis_server.url, tmp_path_factory.mktemp("sidecar"))
    yield sc
    sc.stop()


@pytest.fixture
def start_sidecar(redis_server: Redis, tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    started: List[Sidecar] = []

    def start(*extra_args: str, redis_url: str = "", name: str = "", port: int = 0) -> Sidecar:
        sc = Sidecar(
            redis_url or redis_server.url, tmp_path, extra_args, name=name or f"sidecar-{len(started)}", port=port
        )
        started.append(sc)
        return sc

    yield start
    for sc in started:
        sc.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@dataclass
class Rig:
    """A sidecar whose config has upstreams on the test's HTTP server, and a
    client of it."""

    sidecar: Sidecar
    upstream: Upstream
    client: Client
    #: An address nothing listens on (the "down" upstream).
    dead_url: str


RIG_CONFIG = """
breakers:
  guarded: {{consecutive_failures: 3, open_duration: 1s, half_open_max_calls: 1}}
  tripwire: {{consecutive_failures: 1, open_duration: 1m}}
upstreams:
  test:
    url: {url}
    timeout: 2s
    retry: {{max_attempts: 1}}
    compensation_retry: {{max_attempts: 3, initial_backoff: 100ms, max_backoff: 200ms}}
  slow:
    url: {url}
    timeout: 200ms
    retry: {{max_attempts: 1}}
  down:
    url: {dead}
    timeout: 1s
    retry: {{max_attempts: 1}}
  tripwire:
    url: {dead}
    timeout: 1s
    breaker: tripwire
    retry: {{max_attempts: 1}}
events:
  topics: [rig.events]
"""


@pytest.fixture
def rig(start_sidecar: Callable[..., Sidecar], upstream: Upstream, tmp_path: Path) -> Iterator[Rig]:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = tmp_path / "rig.yaml"
    cfg.write_text(RIG_CONFIG.format(url=upstream.url, dead=dead))
    sc = start_sidecar("--config", str(cfg), name="rig")
    c = Client(sc.addr, timeout=10.0)
    yield Rig(sc, upstream, c, dead)
    c.close()


@pytest.fixture(autouse=True)
def _no_sidecar_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say what they mean: no SIDECAR_* from the environment."""
    for name in ("SIDECAR_ADDR", "SIDECAR_API_TOKEN", "SIDECAR_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def client(sidecar: Sidecar) -> Iterator[Client]:
    c = Client(sidecar.addr, timeout=10.0)
    yield c
    c.close()


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test (or earlier run) uses."""
    return f"pytest/{request.node.name}/{uuid.uuid4().hex[:8]}"
