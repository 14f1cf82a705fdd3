"""CUDA graphs (models/cuda_graphs.py): which models get them, what happens when a capture fails
(on the CPU every capture does, which is the fallback path), and on a GPU that a replay gives the
eager pictures."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
import torch

from livegen.config import ModelConfig
from livegen.models.base import BatchSpec
from livegen.models.cuda_graphs import GraphedModule
from livegen.models.loader import load_generator
from livegen.server.background import BackgroundServer
from tests.conftest import server_settings

SPEC = BatchSpec(64, 64, 1, 0.0, None)


def pictures(generator, seeds: list[int], prompt: str = "a red fox") -> np.ndarray:
    noise = torch.cat([generator.make_noise(64, 64, seed) for seed in seeds])
    latents = generator.denoise(SPEC, [generator.encode_prompt(prompt)] * len(seeds), noise, None, seeds, lambda: False)
    return generator.decode(latents)


def test_a_failed_capture_runs_that_shape_eagerly_and_says_why(tiny_sd):
    """On the CPU there is no CUDA to capture with: every shape must fall back to the eager module,
    with the same outputs, and the reason kept for /readyz; a shape first met after warm-up runs
    eagerly without trying to capture."""
    generator = load_generator(ModelConfig(source=str(tiny_sd), sizes=["64x64"], device="cpu"))
    generator.denoiser = generator.pipe.unet  # eager, not the CPU's traces: the same module the graphs wrap
    expected = pictures(generator, [1, 2])
    generator.denoiser = GraphedModule(generator.pipe.unet, None, "tiny denoiser")
    generator.vae.decoder = GraphedModule(generator.vae.decoder, None, "tiny decoder")
    np.testing.assert_array_equal(pictures(generator, [1, 2]), expected)
    for module in (generator.denoiser, generator.vae.decoder):
        assert module.graphs == {} and len(module.eager) == 1
        [reason] = module.eager.values()
        assert reason.startswith("capture failed:")
    generator.warmed()
    assert not generator.denoiser.capturing
    np.testing.assert_array_equal(pictures(generator, [3]), pictures(generator, [3]))
    assert "first met after warm-up" in generator.denoiser.describe()["eager"]


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor, factors: set) -> torch.Tensor:
        return x * len(factors)


def test_an_argument_that_cannot_key_a_graph_runs_eagerly_without_a_capture():
    module = GraphedModule(Scale(), None, "scale")
    assert module(torch.ones(2), {1, 2, 3}).sum() == 6
    assert module.graphs == {} and module.eager == {}


def test_the_cpu_runs_traces_whatever_the_setting_and_readyz_says_how_each_model_runs(tiny_sd):
    generator = load_generator(ModelConfig(source=str(tiny_sd), sizes=["64x64"], device="cpu", cuda_graphs=True))
    on_cpu = {"mode": "TorchScript traces", "threads": torch.get_num_threads()}
    assert generator.describe_acceleration() == on_cpu
    live = BackgroundServer(server_settings(tiny_sd))
    try:
        body = httpx.get(live.url + "/readyz").json()
    finally:
        live.stop()
    assert body["ready"] and body["acceleration"] == {"tiny": on_cpu}


def test_readyz_says_the_threads_the_model_computes_with_whatever_thread_asks(tiny_sd):
    """The event loop's thread may have met torch while the warm-up beside speech ran at one thread."""
    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("one core: one thread either way")
    generator = load_generator(ModelConfig(source=str(tiny_sd), sizes=["64x64"], device="cpu"))
    seen = []

    def ask() -> None:
        torch.set_num_threads(1)
        try:
            seen.append((torch.get_num_threads(), generator.describe_acceleration()["threads"]))
        finally:
            torch.set_num_threads(threads)

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join()
    assert seen == [(1, threads)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphs_replay_the_eager_pictures_on_the_gpu(tiny_sd):
    """Captured at warm-up, batch 4 first (its pool then holds batch 1's graph), the replays give
    the eager pictures within fp16 tolerance, and a new prompt reaches a replayed graph."""
    config = dict(source=str(tiny_sd), sizes=["64x64"], device="cuda", dtype="float16")
    eager = load_generator(ModelConfig(**config, cuda_graphs=False))
    graphed = load_generator(ModelConfig(**config))
    assert graphed.describe_acceleration()["mode"] == "CUDA graphs"
    for seeds in ([1, 2, 3, 4], [5]):
        pictures(graphed, seeds)  # the warm-up's capture
    graphed.warmed()
    for seeds, prompt in (([1, 2, 3, 4], "a red fox"), ([5], "a blue whale")):
        replayed = pictures(graphed, seeds, prompt).astype(int)
        assert np.abs(replayed - pictures(eager, seeds, prompt).astype(int)).max() <= 2
    described = graphed.describe_acceleration()
    assert described["denoiser"]["captured"] == 2 and described["denoiser"]["eager"] == []
