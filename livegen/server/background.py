"""Run an app under a real uvicorn server in a background thread (tests, benchmarks)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from livegen.config import ModelConfig, Settings
from livegen.engine import Engine
from livegen.models.embedded import EMBEDDED_MODEL
from livegen.server.app import create_app


# Below Linux's ephemeral ports (32768-60999), which any process binding port 0 may be handed, and
# above Ray's worker ports (10002-19999): a port picked here is not given to another process before
# its server binds it. With ports from the ephemeral range, the Ray Serve bench's HAProxy once
# failed to start its listeners (a port in use), most likely taken by one of the dozens of
# processes Ray starts between the pick and HAProxy's bind.
PORTS = range(20000, 32000)


def poll(check: Callable[[httpx.Client], bool], timeout: float, gone: Callable[[], bool] = lambda: False) -> bool:
    """Call `check` with one client every 20 ms until it answers true (True), or `gone()` does or
    `timeout` seconds pass (False); an HTTP error is a "not yet". One client for every call:
    `httpx.get` builds a client and its TLS context each time, which kept 84% of a core busy
    polling every 10 ms, beside the start it was timing."""
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline and not gone():
            try:
                if check(client):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    return False


def free_port() -> int:
    """A loopback port free right now, for a server in another process."""
    for port in random.sample(PORTS, 100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # the range is full: any port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`python -m livegen serve` in a process of its own, ready (or failed) when the constructor returns."""

    def __init__(self, port: int, args: list[str] | None = None, ready_timeout: float = 300,
                 env: dict[str, str] | None = None, log: Path | None = None):
        """`log`: a file for the server's output (discarded if absent)."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        output = log.open("ab") if log else subprocess.DEVNULL
        self.process = subprocess.Popen([sys.executable, "-m", "livegen", "serve", "--port", str(port), *(args or [])],
                                        stdout=output, stderr=output, env={**os.environ, **(env or {})})
        if log:
            output.close()  # the child holds its own copy
        if not poll(lambda client: client.get(self.url + "/readyz").status_code == 200, ready_timeout,
                    gone=lambda: self.process.poll() is not None):
            self.kill()
            raise RuntimeError(f"livegen serve exited or never turned ready (exit code {self.process.poll()})")

    @classmethod
    def serving(cls, config: ModelConfig, env: dict[str, str] | None = None, args: list[str] | None = None,
                log: Path | None = None) -> ServeProcess:
        """One that serves `config` at its sizes (the embedded model is `serve`'s default), on a free
        port; `args`: more of `livegen serve`'s."""
        sizes = [arg for w, h in config.sizes for arg in ("--size", f"{w}x{h}")]
        model = [] if Path(config.source) == EMBEDDED_MODEL else ["--model", config.source]
        return cls(free_port(), [*model, *sizes, *(args or [])], env=env, log=log)

    def kill(self) -> None:
        """SIGKILL: no shutdown, as when the machine or the process dies."""
        self.process.kill()
        self.process.wait()


class LoopbackServer:
    """Any ASGI app on a free loopback port; `stop()` shuts it down."""

    def __init__(self, app: Any, ws_max_size: int = 16 * 1024 * 1024):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_max_size=ws_max_size))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.wait_for("/livez", 30)

    def wait_for(self, path: str, timeout: float) -> None:
        """Until GET `path` answers 200."""
        if not poll(lambda client: client.get(self.url + path).status_code == 200, timeout):
            raise TimeoutError("server did not come up in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class BackgroundServer(LoopbackServer):
    """livegen itself, ready (every model warm) when the constructor returns unless told not to wait."""

    def __init__(self, settings: Settings, wait_ready: bool = True, ready_timeout: float = 300):
        self.engine = Engine(settings)
        super().__init__(create_app(self.engine), ws_max_size=settings.max_message_bytes * 4)
        if wait_ready:
            self.wait_for("/readyz", ready_timeout)
