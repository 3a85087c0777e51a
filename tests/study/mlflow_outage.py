"""A real ``mlflow server`` on 127.0.0.1 (test_cluster.py's too), and a forwarding proxy in
front of it that drops requests on cue: an outage that begins at an exact request (the one
after a trial's run was created, say), which stopping the server cannot time."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a SQLite store in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        import requests

        command = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.root}/mlflow.db",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--workers",
            "1",
        ]
        log = (self.root / "server.log").open("ab")
        # MLflow 3's job runner (a dozen huey worker processes) serves no tracking request.
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            command, stdout=log, stderr=log, start_new_session=True, env=environment
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"the MLflow server did not start; see {self.root / 'server.log'}")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
            self.process = None


class OutageProxy:
    """Forwards HTTP requests to ``upstream``; while :attr:`down` is set it reads each request
    and closes the connection without an answer (the client sees it dropped).

    ``cut_after(method, path, body)``, when set, is asked after each forwarded request:
    True sets :attr:`down` right after that request's answer went back.
    """

    def __init__(self, upstream_port: int) -> None:
        self.down = threading.Event()
        self.cut_after: Callable[[str, str, bytes], bool] | None = None
        self.dropped = 0
        self._lock = threading.Lock()
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.down.is_set():
                    with proxy._lock:
                        proxy.dropped += 1
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response_only(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if proxy.cut_after is not None and proxy.cut_after(self.command, self.path, body):
                    proxy.cut_after = None
                    proxy.down.set()

            # http.server dispatches on these names.
            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self._server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_dropped(self, count: int, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.dropped < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {count} dropped request(s)")
            time.sleep(0.05)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
