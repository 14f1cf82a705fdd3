"""Shared fixtures: tiny random-weight pipelines saved to disk, and a real uvicorn server."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from livegen.config import ModelConfig, Settings
from livegen.engine import Engine
from livegen.models.tiny import build_tiny_pipeline
from livegen.server.app import create_app

SIZES = [(64, 64), (128, 128)]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Build each tiny pipeline once per test run, on first use."""
    root = tmp_path_factory.mktemp("models")
    built: dict[tuple[str, str], Path] = {}

    def get(architecture: str = "sd", sampler: str = "turbo") -> Path:
        key = (architecture, sampler)
        if key not in built:
            built[key] = build_tiny_pipeline(root / f"{architecture}-{sampler}", architecture, sampler)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_sd(tiny_models) -> Path:
    return tiny_models("sd", "turbo")


def png_bytes(width: int = 96, height: int = 80, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = color
    pixels[: height // 2, : width // 2] = (20, 20, 220)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class LiveServer:
    """livegen's app under a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, settings: Settings, wait_ready: bool = True):
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
        self._wait(lambda: httpx.get(self.url + "/livez").status_code == 200)
        if wait_ready:
            self._wait(lambda: httpx.get(self.url + "/readyz").status_code == 200, timeout=120)

    @staticmethod
    def _wait(check, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server did not come up")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def server_settings(model: Path, **overrides) -> Settings:
    defaults = dict(max_batch=4, batch_wait_ms=50, warmup_runs=1, max_message_bytes=64 * 1024,
                    max_prompt_chars=500)
    defaults.update(overrides)
    return Settings(models=[ModelConfig(source=str(model), name="tiny", sizes=SIZES)], **defaults)


@pytest.fixture(scope="session")
def server(tiny_sd: Path):
    live = LiveServer(server_settings(tiny_sd))
    yield live
    live.stop()
