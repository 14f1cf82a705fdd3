"""StreamDiffusion as a peer in `livegen bench`: the same weights, served by StreamDiffusion.

What it measures, on the model livegen serves (1 step, same prompt, same size, same machine):
- text-to-image: `txt2img()` one frame at a time, each followed by a JPEG encode (quality 85),
  because livegen's frame time includes that encode;
- image-to-image: a fixed sequence of camera frames at livegen's strength 0.5 (t_index 1 of 2);
- round robin: N sessions with different prompts served in turn by one StreamDiffusion
  instance (`update_prompt` at every switch), as aggregate frames per second.

Why a separate virtual environment: streamdiffusion 0.1.1 pins diffusers 0.24, which needs
transformers < 4.46 and huggingface_hub < 0.26, while livegen runs on current diffusers. So the
worker (streamdiffusion_worker.py) runs in its own venv and must not import livegen; the two
sides talk through files: JPEG frames in, one JSON document out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# torch 2.13.0 is the CPU build livegen's Makefile installs from local disk; diffusers 0.24
# runs on it (checked on the 2-core CPU), so both sides measure the same kernels.
REQUIREMENTS = (
    "torch==2.13.0",
    "streamdiffusion==0.1.1",
    "diffusers==0.24.0",  # what streamdiffusion 0.1.1 pins
    "transformers>=4.36,<4.46",  # diffusers 0.24 predates transformers 4.46's API changes
    "huggingface_hub>=0.19,<0.26",  # diffusers 0.24 imports cached_download, gone in 0.26
    "accelerate>=0.25,<1.1",  # the releases contemporary with that transformers range
    "protobuf",
    "numpy<2",  # diffusers 0.24 and its transformers were built against numpy 1
    "pillow",
)
WORKER = Path(__file__).with_name("streamdiffusion_worker.py")
MARKER = ".livegen-streamdiffusion"  # written last: its presence means the venv is complete


def ensure_venv(venv: Path) -> Path:
    """Create `venv` with streamdiffusion and its pins, unless a complete one is already there."""
    python = venv / "bin" / "python"
    marker = venv / MARKER
    wanted = "\n".join(REQUIREMENTS)
    if marker.is_file() and marker.read_text() == wanted and python.exists():
        return python
    started = time.perf_counter()
    print(f"streamdiffusion: creating {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    print("streamdiffusion: installing " + ", ".join(REQUIREMENTS), flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    # An import check before the marker: a venv that cannot import streamdiffusion is not complete.
    subprocess.run([str(python), "-W", "ignore", "-c", "import streamdiffusion, diffusers, transformers"], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(venv / "hf-home")})
    marker.write_text(wanted)
    print(f"streamdiffusion: venv ready in {time.perf_counter() - started:.0f} s", flush=True)
    return python


def run_peer(
    venv_python: Path,
    model: Path,
    width: int,
    height: int,
    frames: int,
    sessions: int,
    image_frames: list[bytes],
    timeout_s: float = 1800,
) -> dict:
    """Run the worker on `model` in the StreamDiffusion venv and return its JSON results."""
    from livegen.models.embedded import minilm_path

    with tempfile.TemporaryDirectory(prefix="livegen-streamdiffusion-") as tmp:
        folder = Path(tmp) / "frames"
        folder.mkdir()
        for i, data in enumerate(image_frames):
            (folder / f"{i:05d}.jpg").write_bytes(data)
        output = Path(tmp) / "results.json"
        command = [
            str(venv_python), str(WORKER),
            "--model", str(model), "--minilm", str(minilm_path()),
            "--width", str(width), "--height", str(height),
            "--frames", str(frames), "--sessions", str(sessions),
            "--image-frames", str(folder), "--output", str(output),
        ]
        # Offline, with its own HF home: transformers 4.45 would otherwise migrate the user's cache.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(Path(venv_python).parent.parent / "hf-home")}
        # A separate process: the worker's torch threads and imports never touch livegen's.
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"StreamDiffusion worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(output.read_text())
