"""What `livegen bench gpu` needs on a lent GPU machine beyond that machine's image, carried as wheels.

The lent machine (an H200, reached through the development tool `device`) holds torch,
transformers, numpy and more, but not diffusers, FastAPI or uvicorn, and it cannot fetch anything.
`livegen bench gpu-pack` downloads here the wheels of `CARRIED`, at the versions installed here,
built for the machine's Python (CPython 3.12, x86-64 manylinux), into `.device/wheels`, and checks
that they fit what one call may carry (64 MiB, the working tree included). The call then runs:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 -m livegen bench gpu --no-moderation --cache /tmp/models --output $OUT

with `.device` in the call's `carry`. Moderation is off there: its MiniLM package (90 MB) cannot
travel, and with a cached prompt moderation is a dictionary lookup per frame.
tests/test_device_pack.py runs `bench gpu --cpu` in a Python holding only `DEVICE_IMAGE` and
`CARRIED`, so a new import that the pack lacks fails here, not in scarce device time.
"""

from __future__ import annotations

import re
import subprocess
import sys
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

CARRY_LIMIT = 64 * 2**20  # what one call of the tool may carry, the working tree included
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tree_bytes(root: Path) -> int:
    """The working tree that travels with every call: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file())


def pack(root: Path, folder: Path) -> dict:
    """Download the wheels into `folder` (emptied first); their bytes, and what is left under the limit."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    pins = [f"{name}=={version(name)}" for name in CARRIED]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *(arg for platform in PLATFORMS for arg in ("--platform", platform)), "-d", str(folder), *pins],
                   check=True)
    wheels = sum(path.stat().st_size for path in folder.glob("*.whl"))
    tree = tree_bytes(root)
    return {"wheels": len(pins), "wheel_bytes": wheels, "tree_bytes": tree, "left_bytes": CARRY_LIMIT - wheels - tree}
