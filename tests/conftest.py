"""Shared fixtures: tiny random-weight pipelines saved to disk, and a real uvicorn server."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from livegen.config import AccessConfig, LimitsConfig, ModelConfig, Settings
from livegen.models.tiny import build_tiny_pipeline
from livegen.server.background import BackgroundServer

SIZES = [(64, 64), (128, 128)]
# The quick bench `suite`'s files and the Ray files, one after another on one worker. Serve kills a proxy
# not up within 5 s: beside the suite's benches on two cores, the ray bench's Serve failed to start (2 runs in 2).
SUITE_AND_RAY_FILES = {"test_bench.py", "test_bench_warm.py", "test_ray.py", "test_ray_proxy.py", "test_bench_ray.py"}
SUITE_TIMEOUT_S = 900  # the quick suite runs in the setup of the first test that asks for it: minutes here


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-xdist's workers take whole groups: a file each, so its module fixtures start once, and
    SUITE_AND_RAY_FILES together (the suite runs once, one Ray cluster at a time). Each test that asks
    for `suite` may take its run's time."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("suite-and-ray" if name in SUITE_AND_RAY_FILES else name))
        if "suite" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(SUITE_TIMEOUT_S))


@pytest.fixture(scope="session", autouse=True)
def signing_keys(tmp_path_factory: pytest.TempPathFactory):
    """Servers under test make their development signing chain here, read API keys from here (none
    unless a test makes some) and keep their caches here, not in the user's home."""
    directory = tmp_path_factory.mktemp("keys")
    names = {"LIVEGEN_SAFETY__KEYS": str(directory), "LIVEGEN_ACCESS__KEYS_FILE": str(directory / "api-keys.json"),
             "LIVEGEN_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    yield directory
    for name, value in previous.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value


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


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`livegen bench all --quick`, once for tests/test_bench.py and tests/test_bench_warm.py
    (StreamDiffusion left out: it needs its own venv)."""
    from typer.testing import CliRunner

    from livegen.cli import app

    output = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(app, ["bench", "all", "--quick", "--output", str(output)])
    assert result.exit_code == 0, result.output
    return output


def png_bytes(width: int = 96, height: int = 80, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = color
    pixels[: height // 2, : width // 2] = (20, 20, 220)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def server_settings(model: Path, **overrides) -> Settings:
    """Small limits for fast tests; the message rate is no limit, as the fuzz tests send as fast as answered
    (tests/test_access.py checks the limits)."""
    defaults = dict(max_batch=4, batch_wait_ms=50, warmup_runs=1, max_message_bytes=64 * 1024,
                    max_prompt_chars=500, speech=None,
                    access=AccessConfig(keys_file=Path(os.environ["LIVEGEN_ACCESS__KEYS_FILE"]),
                                        limits=LimitsConfig(inputs_per_session="1000000/second")))
    defaults.update(overrides)
    return Settings(models=[ModelConfig(source=str(model), name="tiny", sizes=SIZES)], **defaults)


@pytest.fixture(scope="session")
def server(tiny_sd: Path):
    live = BackgroundServer(server_settings(tiny_sd))
    yield live
    live.stop()
