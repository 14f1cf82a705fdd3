"""StreamDiffusion as a peer in `livegen bench`: the same weights, served by StreamDiffusion.

What it measures, on the model livegen serves (1 step, same prompt, same size, same machine):
- text-to-image: `txt2img()` one frame at a time, each followed by a JPEG encode (quality 85),
  because livegen's frame time includes that encode;
- image-to-image (bench/camera.py, interleaved with livegen through `PeerProcess`): camera frames
  at livegen's strength 0.5 (t_index 1 of 2);
- round robin: N sessions with different prompts served in turn by one StreamDiffusion
  instance (`update_prompt` at every switch), as aggregate frames per second.

Why a separate virtual environment: streamdiffusion 0.1.1 pins diffusers 0.24, which needs
transformers < 4.46 and huggingface_hub < 0.26, while livegen runs on current diffusers. So the
worker (streamdiffusion_worker.py) runs in its own venv and must not import livegen. The two
sides talk either through a file (`run_peer`: one JSON document out) or, for
interleaved rounds, through JSON lines on the worker's stdin and stdout (`PeerProcess`).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

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


def worker_env(venv_python: Path) -> dict[str, str]:
    """Offline, with its own HF home: transformers 4.45 would otherwise migrate the user's cache.
    Without PYTHONPATH: the venv's packages only, never the ones livegen may run from."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(Path(venv_python).parent.parent / "hf-home")}


def text_encoder_args(model: Path) -> list[str]:
    """--minilm for a folder that names a BertModel text encoder but does not hold it (the embedded model)."""
    index = json.loads((Path(model) / "model_index.json").read_text())
    if index.get("text_encoder", [None, None])[1] == "BertModel" and not (Path(model) / "text_encoder").is_dir():
        from livegen.models.embedded import minilm_path

        return ["--minilm", str(minilm_path())]
    return []


class PeerError(RuntimeError):
    pass


class PeerProcess:
    """StreamDiffusion as a persistent worker process, driven by JSON lines (see the worker's docstring).

        with PeerProcess(python, model, 64, 64) as peer:
            peer.frames(["a red fox", "a red fox"])  # -> [ms, ms], each frame JPEG-encoded
            peer.picture("a red fox", seed=0)         # -> PNG bytes from livegen's noise for seed 0

    Creating it starts the worker with the venv's python; entering (or `wait_ready()`) waits for
    its ready line (load plus StreamDiffusion's 10 warm-up calls), which `ready` then holds
    (warmup_calls, settings, versions). The same methods as bench/warm.py's Worker: `wait_ready`,
    `ask(cmd=...)`, `picture`, `close`.
    """

    def __init__(self, venv_python: Path, model: Path, width: int, height: int, seed: int = 2,
                 mode: str = "txt2img", timeout_s: float = 600, args: list[str] | None = None) -> None:
        """Starts the worker and returns at once: it loads and warms up while other systems do;
        `wait_ready()` (or entering the context) waits for its ready line. `args`: more of the
        worker's (--device, --dtype, --tiny-vae)."""
        self.command = [
            str(venv_python), "-u", str(WORKER), "--model", str(model), *text_encoder_args(model),
            "--width", str(width), "--height", str(height), "--seed", str(seed), "--mode", mode, *(args or []),
        ]
        self.timeout_s = timeout_s
        self.ready: dict = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        # stderr to a file: a pipe nobody reads would fill up and block the worker.
        self._stderr: IO[str] | None = tempfile.TemporaryFile("w+")
        self.process: subprocess.Popen | None = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=worker_env(venv_python))
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def __enter__(self) -> PeerProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self) -> dict:
        """The worker's ready line: {"ready": true, "warmup_calls": 10, "settings": {...}, "versions": {...}}."""
        if self.ready:
            return self.ready
        try:
            self.ready = self._answer()
            if not self.ready.get("ready"):
                raise PeerError(f"StreamDiffusion worker did not get ready: {self.ready}")
        except Exception:
            self.close()
            raise
        return self.ready

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # end of output: the worker exited

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def _answer(self) -> dict:
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            raise PeerError(f"StreamDiffusion worker gave no answer in {self.timeout_s:.0f} s:\n"
                            f"{self._stderr_tail()}") from None
        if line is None:
            code = self.process.wait() if self.process else None
            raise PeerError(f"StreamDiffusion worker exited ({code}):\n{self._stderr_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise PeerError(f"StreamDiffusion worker: {answer['error']}")
        return answer

    def request(self, message: dict) -> dict:
        """Send one request, return its answer; an {"error": ...} answer raises PeerError."""
        if self.process is None or self.process.stdin is None:
            raise PeerError("the StreamDiffusion worker is not running")
        self.wait_ready()
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def ask(self, **message: object) -> dict:
        """`request` with keyword arguments, as bench/warm.py's Worker asks its livegen workers."""
        return self.request(message)

    def frames(self, prompts: list[str], images: list[bytes] | None = None) -> list[float]:
        """One frame per prompt, timed in the worker (prompt update, denoise, decode, JPEG); ms each.
        `images` (JPEG bytes) are the input frames of an img2img worker."""
        message: dict = {"cmd": "frames", "prompts": list(prompts)}
        if images:
            message["images"] = [base64.b64encode(data).decode() for data in images]
        return [float(ms) for ms in self.request(message)["ms"]]

    def picture(self, prompt: str, seed: int) -> bytes:
        """PNG of a text-to-image frame from livegen's initial latent for `seed`."""
        return base64.b64decode(self.request({"cmd": "picture", "prompt": prompt, "seed": seed})["png_b64"])

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            try:
                if process.poll() is None and process.stdin is not None:
                    process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                    process.stdin.flush()
                    process.stdin.close()
                process.wait(timeout=30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def run_peer(
    venv_python: Path,
    model: Path,
    width: int,
    height: int,
    frames: int,
    sessions: int,
    timeout_s: float = 1800,
) -> dict:
    """Run the worker on `model` in the StreamDiffusion venv and return its JSON results."""
    with tempfile.TemporaryDirectory(prefix="livegen-streamdiffusion-") as tmp:
        output = Path(tmp) / "results.json"
        command = [
            str(venv_python), str(WORKER),
            "--model", str(model), *text_encoder_args(model),
            "--width", str(width), "--height", str(height),
            "--frames", str(frames), "--sessions", str(sessions), "--output", str(output),
        ]
        env = worker_env(venv_python)
        # A separate process: the worker's torch threads and imports never touch livegen's.
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"StreamDiffusion worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(output.read_text())
