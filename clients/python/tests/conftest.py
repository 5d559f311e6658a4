"""Session fixtures: one real redis-server and one real sidecar for the whole
run; `start_sidecar` starts more (e.g. to stop or pause one) and stops them
after the test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from harness import Redis, Sidecar
from resilience_sidecar import Client


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
