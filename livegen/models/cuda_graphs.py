"""CUDA graphs for the denoiser and the decoder: captured per input shape during warm-up, replayed after.

On a GPU a small UNet is launch-bound: on the H200 the SD-Turbo UNet took 45 ms for one image
and 47 ms for eight while the host launched its small kernels one by one. A CUDA graph records
the kernels once and replays them with one launch. Each input shape (batch, size, guidance on or
off, conditioning) gets a graph of its own, captured while the engine warms up, on the thread
that serves, with nothing else on the GPU (torch's rule for capture); every graph of a model
shares one memory pool, and the warm-up meets the largest batch first, so the smaller graphs fit
in its blocks. A call copies its inputs into the graph's static tensors, replays, and copies the
outputs out. A shape first met after warm-up runs eagerly (capturing then would share the GPU
with other work); a capture that fails leaves its shape eager, logged and reported on /readyz.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)

CAPTURE_WARM_CALLS = 3  # eager calls on a side stream before capture, as torch's notes advise (lazy init, autotuning)


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list  # the static tensors the graph reads (other leaves are constants of the shape)
    outputs: list[torch.Tensor]
    output_spec: Any


def _shape(leaf: object) -> object:
    """What a graph is specific to: a tensor's shape, dtype, device and layout; any other value itself."""
    if isinstance(leaf, torch.Tensor):
        return (tuple(leaf.shape), leaf.dtype, leaf.device, leaf.is_contiguous(memory_format=torch.channels_last))
    hash(leaf)  # an unhashable argument cannot key a graph: TypeError, and the call runs eagerly
    return leaf


class GraphedModule(torch.nn.Module):
    """Called as `module` is; replays a CUDA graph per input shape captured while `capturing`."""

    def __init__(self, module: torch.nn.Module, pool: Any, name: str):
        super().__init__()
        self.module = module
        self.pool = pool
        self.name = name
        self.capturing = True  # the warm-up's calls capture; the generator turns it off when warm
        self.graphs: dict[tuple, _Graph] = {}
        self.eager: dict[tuple, str] = {}  # shapes that run eagerly, and why

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        try:
            key = (str(spec), *map(_shape, leaves))
        except TypeError:
            return self.module(*args, **kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            if key in self.eager or not self.capturing:
                self.eager.setdefault(key, "first met after warm-up")
                return self.module(*args, **kwargs)
            try:
                graph = self.graphs[key] = self._capture(leaves, spec)
            except Exception as exc:  # never a crash: this shape runs eagerly
                self.eager[key] = f"capture failed: {type(exc).__name__}: {exc}"
                log.warning("%s: CUDA graph capture failed for %s; that shape runs eagerly", self.name,
                            _readable(leaves), exc_info=True)
                return self.module(*args, **kwargs)
        for static, leaf in zip(graph.inputs, leaves):
            if isinstance(static, torch.Tensor):
                static.copy_(leaf)
        graph.graph.replay()
        return tree_unflatten([output.clone() for output in graph.outputs], graph.output_spec)

    def _capture(self, leaves: list, spec: Any) -> _Graph:
        inputs = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(inputs, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARM_CALLS):
                self.module(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.module(*args, **kwargs)
        outputs, output_spec = tree_flatten(output)
        if not all(isinstance(o, torch.Tensor) for o in outputs):
            raise TypeError(f"{self.name} returned something other than tensors: {type(output).__name__}")
        return _Graph(graph, inputs, outputs, output_spec)

    def describe(self) -> dict[str, Any]:
        return {"captured": len(self.graphs), "eager": sorted(set(self.eager.values()))}


def _readable(leaves: list) -> str:
    return ", ".join("x".join(map(str, leaf.shape)) for leaf in leaves if isinstance(leaf, torch.Tensor))


def new_pool() -> Any:
    """One memory pool for all of a model's graphs."""
    return torch.cuda.graph_pool_handle()
