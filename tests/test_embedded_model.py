"""livegen's own emoji model, as shipped in the package: small, loads through the same backend as
real models and through plain diffusers, and draws what the prompt asks for."""

from __future__ import annotations

import json

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from livegen.client import Client
from livegen.config import Settings
from livegen.models.base import BatchSpec
from livegen.models.embedded import EMBEDDED_MODEL, GUIDANCE, IMAGE_SIZE, load_text_encoder
from livegen.models.loader import load_generator
from livegen.server.background import BackgroundServer
from livegen.training.text import PromptEncoder


def generate(generator, prompts: list[str], seed: int = 0, steps: int = 1) -> np.ndarray:
    spec = BatchSpec(IMAGE_SIZE, IMAGE_SIZE, steps, GUIDANCE, None)
    noise = torch.cat([generator.make_noise(IMAGE_SIZE, IMAGE_SIZE, seed) for _ in prompts])
    embeddings = [generator.encode_prompt(p) for p in prompts]
    latents = generator.denoise(spec, embeddings, noise, None, [seed] * len(prompts), lambda: False)
    return generator.decode(latents)


def test_shipped_weights_are_small_and_leave_the_text_encoder_to_its_package():
    files = [f for f in EMBEDDED_MODEL.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 30 * 1024 * 1024
    assert not (EMBEDDED_MODEL / "text_encoder").exists()
    index = json.loads((EMBEDDED_MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]


def test_default_model_is_the_embedded_one():
    (config,) = Settings().models
    assert config.source == str(EMBEDDED_MODEL) and config.sizes == [(IMAGE_SIZE, IMAGE_SIZE)]


def test_backend_generates_a_prompt_dependent_picture():
    generator = load_generator(Settings().models[0])
    assert generator.description.family == "lcm" and generator.description.default_guidance == GUIDANCE
    for steps in (1, 2, 4):
        apple, car = generate(generator, ["a red apple", "a blue car"], steps=steps)
        assert apple.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and apple.dtype == np.uint8
        assert apple.std() > 20  # not blank
        assert np.abs(apple.astype(int) - car.astype(int)).mean() > 10  # the prompt matters
    (background,) = generate(generator, ["a red apple"])[:, :4, :4].reshape(1, -1, 3)
    assert background.mean() > 200  # emoji sit on a white background


def test_plain_diffusers_runs_the_same_weights():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL, text_encoder=load_text_encoder())
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a snowman", num_inference_steps=1, guidance_scale=GUIDANCE, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.std() > 0.08


def test_training_embeddings_equal_the_pipelines_prompt_embeddings():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL, text_encoder=load_text_encoder())
    ours = PromptEncoder()(["a kitty", "flag of Japan"])
    theirs, _ = pipe.encode_prompt(["a kitty", "flag of Japan"], "cpu", 1, False)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_server_serves_the_embedded_model_by_default():
    live = BackgroundServer(Settings(warmup_runs=1))
    try:
        with Client(live.url) as client:
            frame = client.generate("a slice of pizza", seed=3, format="png")
        assert (frame.width, frame.height) == (IMAGE_SIZE, IMAGE_SIZE)
        assert frame.model == "emoji"
    finally:
        live.stop()
