"""What `livegen bench gpu` needs on a lent GPU machine beyond that machine's image, carried there.

The lent machine (an H200, reached through the development tool `device`) holds torch,
transformers, numpy and more, but not diffusers, FastAPI or uvicorn, and it cannot fetch anything.
`livegen bench gpu-pack` downloads here the wheels of `CARRIED` at the versions installed here,
built for the machine's Python (CPython 3.12, x86-64 manylinux), installs them into a folder and
packs it as `.device/livegen-site.tar.xz` (xz: 19 MB where the wheels take 31). With
`--peer-python`, StreamDiffusion's stack (`PEER_CARRIED`, at that venv's versions) goes into
`.device/peer-site.tar.xz` the same way. Both must fit what one call may carry (64 MiB, the
working tree included). The call carries `.device` and runs:

    python3 -m livegen.bench.device_pack .device &&
    PYTHONPATH=/tmp/site:$PWD python3 -m livegen bench gpu --no-moderation --peer-python /tmp/peer-venv/bin/python ...

This module's own entry (`unpack`) uses the standard library alone: livegen's packages are not
there yet when it runs. It puts livegen's site in /tmp/site, and StreamDiffusion's in a venv
at /tmp/peer-venv that sees the image's packages (torch, numpy) behind its own pins. Moderation is
off there: its MiniLM package (90 MB) cannot travel, and with a cached prompt moderation is a
dictionary lookup per frame. tests/test_device_pack.py runs `bench gpu --cpu` in a Python holding
only `DEVICE_IMAGE` and `CARRIED`, so a new import that the pack lacks fails here, not in scarce
device time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

# The machine image's Python distributions, as the tool's notes list them (read 2026-11-17).
DEVICE_IMAGE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# What `livegen bench gpu` (the engine, `livegen serve` and its client) imports beyond the image.
CARRIED = (
    "diffusers",
    "fastapi", "starlette", "opentelemetry-api", "uvicorn", "websockets", "python-dotenv",
    "pydantic", "pydantic-core", "pydantic-settings", "annotated-types", "typing-inspection",
    "c2pa-python", "cryptography", "cffi", "pycparser",  # Content Credentials' keys, checked at start
    "limits", "deprecated", "pyjwt",  # rate limits and browser tokens
    "platformdirs",
)

# StreamDiffusion's pins (bench/streamdiffusion.py) that the image lacks or holds at other versions;
# torch, numpy (2.x: checked with this stack), pillow and the rest come from the image.
PEER_CARRIED = ("streamdiffusion", "diffusers", "transformers", "huggingface-hub", "tokenizers", "accelerate",
                "fire", "termcolor", "omegaconf", "importlib-metadata")

CARRY_LIMIT = 64 * 2**20  # what one call of the tool may carry, the working tree included
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
          *(arg for platform in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64",
                                 "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64")
            for arg in ("--platform", platform))]
SITE, PEER_VENV = Path("/tmp/site"), Path("/tmp/peer-venv")  # where `unpack` puts them on the machine


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tree_bytes(root: Path) -> int:
    """The working tree that travels with every call: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file())


def peer_pins(peer_python: Path) -> list[str]:
    """PEER_CARRIED at the versions the StreamDiffusion venv holds."""
    code = f"from importlib.metadata import version; print(' '.join(f'{{n}}=={{version(n)}}' for n in {PEER_CARRIED!r}))"
    return subprocess.run([str(peer_python), "-c", code], capture_output=True, text=True, check=True).stdout.split()


def site_archive(pins: list[str], archive: Path) -> None:
    """The wheels of `pins` for the machine's Python, installed into a folder, packed as tar.xz."""
    with tempfile.TemporaryDirectory(prefix="livegen-device-") as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        pip = [sys.executable, "-m", "pip"]
        subprocess.run([*pip, "download", "--quiet", "--no-deps", *TARGET, "-d", str(wheels), *pins], check=True)
        subprocess.run([*pip, "install", "--quiet", "--no-index", "--no-deps", "--no-compile", *TARGET,
                        "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))], check=True)
        with tarfile.open(archive, "w:xz") as packed:
            packed.add(site, arcname=".")


def pack(root: Path, folder: Path, peer_python: Path | None = None) -> dict:
    """Write the archives into `folder` (emptied first); their bytes, and what is left under the limit."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    sites = {"livegen": [f"{name}=={version(name)}" for name in CARRIED]}
    if peer_python is not None:
        sites["peer"] = peer_pins(peer_python)
    for name, pins in sites.items():
        site_archive(pins, folder / f"{name}-site.tar.xz")
    archives = sum(path.stat().st_size for path in folder.iterdir())
    tree = tree_bytes(root)
    return {"sites": sorted(sites), "archive_bytes": archives, "tree_bytes": tree,
            "left_bytes": CARRY_LIMIT - archives - tree}


def device_command(folder: Path, peer: bool) -> str:
    """The call's command on the machine: unpack what `folder` carries, then run `bench gpu` with it."""
    peer_python = f" --peer-python {PEER_VENV}/bin/python" if peer else ""
    return (f"python3 -m livegen.bench.device_pack {folder} && PYTHONPATH={SITE}:$PWD python3 -m livegen bench gpu "
            f"--no-moderation{peer_python} --budget-s 420 --cache /tmp/models --output $OUT")


def unpack(folder: Path, site: Path = SITE, peer_venv: Path = PEER_VENV) -> None:
    """On the machine: livegen's site into `site`; StreamDiffusion's, if packed, into a venv at
    `peer_venv` that sees this Python's packages (the image's torch) behind its own pins. The
    machine's python3 is itself a venv, whose packages `--system-site-packages` would not reach:
    a .pth file names them instead, and a .pth entry comes after the venv's own site-packages."""
    with tarfile.open(folder / "livegen-site.tar.xz") as packed:
        packed.extractall(site, filter="data")
    peer = folder / "peer-site.tar.xz"
    if peer.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(peer_venv)], check=True)
        (peer_site,) = (peer_venv / "lib").glob("python*/site-packages")
        with tarfile.open(peer) as packed:
            packed.extractall(peer_site, filter="data")
        image = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
        (peer_site / "machine-image.pth").write_text("".join(f"{path}\n" for path in image))


if __name__ == "__main__":
    unpack(Path(sys.argv[1]))
