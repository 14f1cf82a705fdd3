"""A BERT text encoder's last hidden states through onnxruntime, for prompts encoded on the CPU.

MiniLM's forward is many small operations: on the 2-core CPU one 32-token prompt took 9.9 ms as
a TorchScript trace and 5.0 ms in onnxruntime, which fuses them (largest difference 5e-6).
Exporting the graph takes about 1 s, so it is kept in a cache folder keyed by the encoder's
weights and the versions that shape the graph: a later start, or a second encoder with the same
weights in the same process, reads it instead. MiniLM from its package (`minilm_graph`: moderation's,
and the embedded model's) is keyed by its weights file instead of their values: a start that finds
it loads neither the weights nor transformers (a second on the 2-core CPU).
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import torch

from livegen import cache
from livegen.models.embedded import load_text_encoder, minilm_path
from livegen.models.onnx_session import open_session

log = logging.getLogger(__name__)


class _LastHidden(torch.nn.Module):
    """The encoder's forward as a function of tensors only, which export needs."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(ids, attention_mask=mask, return_dict=False)[0]


def _versions() -> str:
    return f"{torch.__version__} {version('transformers')}"


def _fingerprint(encoder: torch.nn.Module) -> str:
    digest = hashlib.sha256(f"{_versions()} {type(encoder).__name__}".encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _export(encoder: torch.nn.Module) -> bytes:
    graph = io.BytesIO()
    example = torch.zeros(1, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    # In eval mode: export leaves the module in the mode it found it, and a new module trains
    # (dropout on) until told otherwise, which would reach the encoder the pipeline still holds.
    with torch.no_grad(), warnings.catch_warnings():  # the TorchScript exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(_LastHidden(encoder).eval(), (example, torch.ones_like(example)), graph,
                          input_names=["ids", "mask"], output_names=["hidden"], opset_version=17,
                          dynamic_axes={"ids": axes, "mask": axes}, dynamo=False)
    return graph.getvalue()


@dataclass(frozen=True)
class Graph:
    """An encoder's ONNX graph as a cache entry: its `name`, and how to export it when the cache has none."""

    name: str
    export: Callable[[], bytes]

    def read(self, fresh: bool = False) -> bytes:
        """From the cache when it holds the graph, unless `fresh`; else exported and kept."""
        if not fresh and (graph := cache.read(self.name)):
            return graph
        graph = self.export()
        cache.keep(self.name, graph)
        return graph


def exported_graph(encoder: torch.nn.Module) -> Graph:
    """An encoder in memory, kept under a fingerprint of its weights."""
    return Graph(f"onnx/text-encoder-{_fingerprint(encoder)}.onnx", lambda: _export(encoder))


def minilm_graph() -> Graph:
    """all-MiniLM-L6-v2 from its package, kept under a key of its weights file: a start that finds it
    loads neither the weights nor transformers."""
    weights = minilm_path() / "model.safetensors"
    key = hashlib.sha256(f"{cache.file_key(weights)} {_versions()}".encode()).hexdigest()[:32]
    return Graph(f"onnx/minilm-{key}.onnx", lambda: _export(load_text_encoder().eval()))


class OnnxTextEncoder:
    """Called as the encoder is, with token ids and an attention mask; answers a float32 tensor."""

    def __init__(self, graph: Graph, threads: int):
        try:
            self.session = open_session(graph.read, graph.name, threads=threads)
        except Exception:  # a damaged cached graph: export afresh, and replace it
            log.warning("the cached text encoder graph did not load; exporting it again", exc_info=True)
            self.session = open_session(lambda: graph.read(fresh=True), graph.name, threads=threads)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        (hidden,) = self.session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
        return torch.from_numpy(hidden)
