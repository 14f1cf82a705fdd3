"""Run the app under a real uvicorn server in a background thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import uvicorn

from livegen.config import Settings
from livegen.engine import Engine
from livegen.server.app import create_app


class BackgroundServer:
    """livegen on a free loopback port; `stop()` shuts it down."""

    def __init__(self, settings: Settings, wait_ready: bool = True, ready_timeout: float = 300):
        self.engine = Engine(settings)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.engine), log_level="warning",
                                ws_max_size=settings.max_message_bytes * 4)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self._wait(lambda: httpx.get(self.url + "/livez").status_code == 200, 30)
        if wait_ready:
            self._wait(lambda: httpx.get(self.url + "/readyz").status_code == 200, ready_timeout)

    @staticmethod
    def _wait(check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise TimeoutError("server did not come up in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
