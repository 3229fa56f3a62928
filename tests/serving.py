"""Servers for tests, on loopback: an ASGI app served by uvicorn on a thread (``Served``), and a
``blendin serve`` process (``ServeProcess``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``app`` served by uvicorn on a daemon thread; ``url`` is its root."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class ServeProcess:
    """``blendin serve`` in its own process (``args``: its options); ``start()`` returns at once,
    ``wait()`` until ``/health`` answers."""

    def __init__(self, *args: str, log_path: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "blendin_llm.cli", "serve", *args,
                     "--port", str(self.port)]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServeProcess":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ))
        return self

    def wait(self, timeout: float = 180) -> "ServeProcess":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"blendin serve exited with {self.proc.returncode}: "
                                   f"{self.args}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"blendin serve did not start in {timeout} s: {self.args}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
