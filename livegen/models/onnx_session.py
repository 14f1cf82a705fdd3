"""onnxruntime sessions that keep their optimized graphs in the cache folder, and whose threads
do not spin.

Opening a session optimizes its graph first (fusions, constant folding, the CPU's own layouts):
for the speech models and MiniLM, 1.2 s of CPU in every start, beside the image model's warm-up on
the same cores. The first start keeps each optimized graph; later ones open it with the optimizers
off (the same outputs, bit for bit, and the same speed). The optimized graph may hold this
processor's layouts, so its key names the machine, onnxruntime's version and the graph.

onnxruntime's threads spin between calls by default, keeping the cores busy for the torch work
and the Python threads that follow on the same cores: the image model's UNet after MiniLM took 33
ms instead of 15; with the voices' threads spinning, speech beside an image session gave 7.9-8.5
frames/s and a first sound in 140 ms (p50), without 10.7-11.4 frames/s and 115-123 ms, and
synthesis took 0.053-0.059 of the audio's duration against 0.042-0.046 (two runs each, alternating).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from livegen import cache

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = ["CPUExecutionProvider"]


GraphSource = Callable[[], bytes | str]  # an ONNX graph's bytes, or its file's path, read when called


def open_session(graph: GraphSource, name: str, providers: Sequence[str] = CPU,
                 threads: int | None = None) -> ort.InferenceSession:
    """A session of the graph `graph()` gives, named `name` as the cache's entries are: the name must
    change when the graph does. `graph` is called only when the cache holds no optimized copy: a
    start that finds one reads nothing else (the voices' halves and MiniLM's graph, 245 MB a start).
    `threads`: onnxruntime's intra-op threads (its own choice if None). Off the CPU, nothing is kept."""
    import onnxruntime as ort

    def options(level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
        made = ort.SessionOptions()
        made.graph_optimization_level = level
        if threads:
            made.intra_op_num_threads = threads
        made.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return made

    if list(providers) != CPU:
        return ort.InferenceSession(graph(), options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), providers=providers)
    key = hashlib.sha256(f"{name} onnxruntime {ort.__version__}; {cache.machine()}".encode()).hexdigest()[:32]
    kept_name = f"onnx-optimized/{key}.onnx"
    if (kept := cache.use(kept_name)) is not None:
        try:  # from its path: onnxruntime reads a file in 0.6x the time it takes the same bytes from Python
            return ort.InferenceSession(str(kept), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), providers=CPU)
        except Exception:  # damaged on disk
            log.warning("the kept optimized graph of %s did not open; optimizing it again", name, exc_info=True)
    fresh = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    try:
        folder = Path(tempfile.mkdtemp(prefix="livegen-onnx-"))
    except OSError:  # no temporary folder to write in (a read-only file system): optimized, not kept
        return ort.InferenceSession(graph(), fresh, providers=CPU)
    try:
        optimized = folder / "optimized.onnx"
        fresh.optimized_model_filepath = str(optimized)
        fresh.log_severity_level = 3  # not its warning that the graph may hold this processor's layouts: the key says so
        session = ort.InferenceSession(graph(), fresh, providers=CPU)
        if optimized.is_file():
            cache.keep(kept_name, optimized.read_bytes())
        return session
    finally:
        shutil.rmtree(folder, ignore_errors=True)
