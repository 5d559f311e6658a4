"""A real HTTP server on a free loopback port for the tests: the upstream the
sidecar calls (ExecuteCall, saga compensations). It records every request
and answers with the status/body set per path (200 and "ok" by default)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple


@dataclass
class Request:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class Upstream:
    def __init__(self) -> None:
        self.requests: List[Request] = []
        self._answers: Dict[str, Tuple[int, bytes, float]] = {}
        self._cond = threading.Condition()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with upstream._cond:
                    upstream.requests.append(
                        Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status, answer, delay = upstream._answers.get(path, (200, b"ok", 0.0))
                    upstream._cond.notify_all()
                if delay:
                    time.sleep(delay)  # real time: a slow upstream
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("X-Upstream", "test")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up (a timeout under test)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-upstream", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, path: str, status: int, body: bytes = b"", delay: float = 0.0) -> None:
        with self._cond:
            self._answers[path] = (status, body, delay)

    def wait_for(self, count: int, timeout: float = 30.0, path_prefix: str = "") -> List[Request]:
        """Waits until at least count requests (to paths starting with
        path_prefix) arrived; returns them in order."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.requests if r.path.startswith(path_prefix)]
                left = deadline - time.monotonic()
                if len(got) >= count or left <= 0:
                    return got
                self._cond.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def traceparent_trace_id(value: Optional[str]) -> Optional[str]:
    """The trace id of a W3C traceparent ("00-<trace id>-<span id>-<flags>")."""
    if not value:
        return None
    parts = value.split("-")
    return parts[1] if len(parts) == 4 else None
