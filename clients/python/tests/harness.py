"""Real processes for the tests: a redis-server and the sidecar binary, each on
a free loopback port, stopped at teardown. Nothing here is mocked."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT = 15.0


class HarnessError(RuntimeError):
    pass


def sidecar_bin() -> Path:
    """$SIDECAR_BIN, else <repo>/.bin/sidecar; it must exist."""
    path = Path(os.environ.get("SIDECAR_BIN") or REPO_ROOT / ".bin" / "sidecar")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise HarnessError(
            f"sidecar binary not found at {path}: build it with "
            f"`cd {REPO_ROOT} && go build -o .bin/sidecar ./cmd/sidecar`, or set SIDECAR_BIN"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_stopped(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Waits until every thread of proc is stopped (state T in /proc), so
    that a SIGSTOP has taken effect before the test goes on: kill(2) only
    queues the signal."""
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{proc.pid}/task")
    while True:
        states = []
        for stat in tasks.glob("*/stat"):
            try:
                # The state follows the parenthesised command name.
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue
        if states and all(s in ("T", "t") for s in states):
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"process {proc.pid} not stopped within {timeout}s (thread states {states})")
        time.sleep(0.005)  # real time: the kernel delivers the stop to each thread


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGCONT)  # a paused process cannot exit
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Redis:
    """redis-server --port P --save "" --appendonly no, on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise HarnessError("redis-server is not on PATH (run scripts/ensure-redis.sh from the repo root)")
        self.workdir = workdir
        self.log = workdir / "redis.log"
        last = ""
        for _ in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(
                    [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(workdir)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            if self._wait_ping():
                return
            last = _tail(self.log)
            _stop(self.proc)
        raise HarnessError(f"redis-server did not answer PING within {START_TIMEOUT}s:\n{last}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ping(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def command(self, *args: str) -> bytes:
        """Sends one command (RESP) and returns the raw first reply line."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        if reply.startswith(b"-"):
            raise HarnessError(f"redis {args}: {reply.decode(errors='replace').strip()}")
        return reply

    def pause(self) -> None:
        """SIGSTOP, returning once the process is stopped."""
        self.proc.send_signal(signal.SIGSTOP)
        wait_stopped(self.proc)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        _stop(self.proc)


class Sidecar:
    """The real sidecar binary: --listen 127.0.0.1:Q --metrics-listen "" --redis-url URL.

    SIDECAR_* variables of the test environment are not passed on, so that
    only the flags given here configure it.
    """

    def __init__(
        self, redis_url: str, workdir: Path, extra_args: Sequence[str] = (), name: str = "sidecar", port: int = 0
    ) -> None:
        binary = sidecar_bin()
        self.log = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        last = ""
        for _ in range(1 if port else 3):
            self.port = port or free_port()
            #: Monotonic time the process was started (the last try).
            self.spawned_at = time.monotonic()
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(
                    [str(binary), "--listen", self.addr, "--metrics-listen", "", "--redis-url", redis_url,
                     *extra_args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                )
            if self._wait_serving():
                return
            last = _tail(self.log)
            _stop(self.proc)
        raise HarnessError(f"sidecar did not report SERVING within {START_TIMEOUT}s:\n{last}")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_serving(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        with grpc.insecure_channel(self.addr, options=[("grpc.enable_http_proxy", 0)]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        return False

    def pause(self) -> None:
        """SIGSTOP: the socket stays open but nothing answers (a hung
        sidecar). Returns once every thread of the process is stopped."""
        self.proc.send_signal(signal.SIGSTOP)
        wait_stopped(self.proc)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL: the sidecar dies at once, without releasing anything."""
        self.proc.kill()
        self.proc.wait(10)

    def exit_code(self) -> Optional[int]:
        return self.proc.poll()
