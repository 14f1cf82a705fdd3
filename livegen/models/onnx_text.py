"""A BERT text encoder's last hidden states through onnxruntime, for prompts encoded on the CPU.

MiniLM's forward is many small operations: on the 2-core CPU one 32-token prompt took 9.9 ms as
a TorchScript trace and 5.0 ms in onnxruntime, which fuses them (largest difference 5e-6).
Exporting the graph takes about 1 s, so it is kept in a cache folder keyed by the encoder's
weights and the versions that shape the graph: a later start, or a second encoder with the same
weights in the same process, reads it instead.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings

import torch

from livegen import cache

log = logging.getLogger(__name__)


class _LastHidden(torch.nn.Module):
    """The encoder's forward as a function of tensors only, which export needs."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(ids, attention_mask=mask, return_dict=False)[0]


def _fingerprint(encoder: torch.nn.Module) -> str:
    import transformers

    digest = hashlib.sha256(f"{torch.__version__} {transformers.__version__} {type(encoder).__name__}".encode())
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


def exported_graph(encoder: torch.nn.Module, fresh: bool = False) -> bytes:
    """The encoder as an ONNX graph: from the cache when it holds one for these weights, unless `fresh`."""
    name = f"onnx/text-encoder-{_fingerprint(encoder)}.onnx"
    if not fresh and (graph := cache.read(name)):
        return graph
    graph = _export(encoder)
    cache.keep(name, graph)
    return graph


class OnnxTextEncoder:
    """Called as the encoder is, with token ids and an attention mask; answers a float32 tensor."""

    def __init__(self, encoder: torch.nn.Module, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads would keep the cores busy after each call, slowing the torch work that
        # follows (the UNet: 15 -> 33 ms on the 2-core CPU).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(exported_graph(encoder), options, providers=["CPUExecutionProvider"])
        except Exception:  # a damaged cached graph: export afresh, and replace it
            log.warning("the cached text encoder graph did not load; exporting it again", exc_info=True)
            self.session = ort.InferenceSession(exported_graph(encoder, fresh=True), options,
                                                providers=["CPUExecutionProvider"])

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        (hidden,) = self.session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
        return torch.from_numpy(hidden)
