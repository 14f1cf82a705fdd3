"""livegen's own emoji model, as shipped in the package: small, loads through the same backend as
real models and through plain diffusers, and draws what the prompt asks for (judged against the
emoji font's own renders, not by how much pictures differ)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from livegen.client import Client
from livegen.config import ModelConfig, Settings
from livegen.models.base import BatchSpec
from livegen.models.embedded import EMBEDDED_MODEL, GUIDANCE, IMAGE_SIZE, load_text_encoder
from livegen.models.loader import load_generator
from livegen.server.background import BackgroundServer
from livegen.training import dataset
from livegen.training.text import PromptEncoder

# Prompts and the emoji each asks for. The reference is the emoji font itself: each generated
# picture is matched to its nearest render among these emoji (pixels averaged over 4x4 blocks,
# Euclidean distance), so a hit means the picture looks like the asked emoji, not merely unlike the
# other prompts' pictures.
ASKED = {
    "a red apple": "🍎", "a slice of pizza": "🍕", "a rainbow": "🌈", "a red car": "🚗",
    "a snowman": "⛄", "a rocket": "🚀", "a kitty": "🐱", "the flag of japan": "🇯🇵",
    "a banana": "🍌", "a evergreen tree": "🌲", "a red heart": "❤️", "a soccer ball": "⚽",
}  # fmt: skip
SEEDS = (0, 1, 2)
# Chance is 1 in 12 (3 of 36); the shipped model scores about 30 of 36. Random weights of the same
# architecture score at chance, so half right cannot come from prompt-dependent noise.
MIN_HITS = len(ASKED) * len(SEEDS) // 2


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


def nearest_emoji_hits(generator) -> int:
    """How many of the pictures for ASKED x SEEDS are nearest to the render of the emoji asked for."""
    font = dataset._load_font()
    renders = np.stack([np.asarray(dataset.render(char, IMAGE_SIZE, font)) for char in ASKED.values()])

    def features(images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
        return torch.nn.functional.avg_pool2d(pixels, 4).flatten(1)

    gallery = features(renders)
    hits = 0
    for seed in SEEDS:
        nearest = torch.cdist(features(generate(generator, list(ASKED), seed=seed)), gallery).argmin(dim=1)
        hits += int((nearest == torch.arange(len(ASKED))).sum())
    return hits


def test_one_step_picture_shows_the_emoji_the_prompt_asks_for():
    hits = nearest_emoji_hits(load_generator(Settings().models[0]))
    assert hits >= MIN_HITS, f"{hits} of {len(ASKED) * len(SEEDS)} pictures nearest to the asked emoji"


def test_prompt_following_check_fails_random_weights(tmp_path: Path):
    """The check above is not passed by any prompt-dependent picture: the same architecture with
    random UNet weights (same text encoder, autoencoder and sampler) fails it."""
    folder = tmp_path / "emoji-random"
    shutil.copytree(EMBEDDED_MODEL, folder)
    unet = UNet2DConditionModel.from_pretrained(EMBEDDED_MODEL / "unet")
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(unet.config).to(unet.dtype).save_pretrained(folder / "unet")
    generator = load_generator(ModelConfig(source=str(folder), sizes=[(IMAGE_SIZE, IMAGE_SIZE)]))
    assert nearest_emoji_hits(generator) < MIN_HITS


def test_plain_diffusers_runs_the_same_weights():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL, text_encoder=load_text_encoder())
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a snowman", num_inference_steps=1, guidance_scale=GUIDANCE, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.std() > 0.08


def test_training_embeddings_equal_the_pipelines_and_a_forward_over_the_real_tokens():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL, text_encoder=load_text_encoder())
    real, padded = PromptEncoder()(["a kitty", "flag of Japan"])
    theirs, _ = pipe.encode_prompt(["a kitty", "flag of Japan"], "cpu", 1, False)
    assert torch.allclose(padded, theirs, atol=1e-5)
    ids = pipe.tokenizer("flag of Japan", return_tensors="pt").input_ids
    alone = pipe.text_encoder(ids)[0][0]
    assert torch.allclose(real[1, : len(alone)], alone, atol=1e-5)
    assert torch.allclose(real[1, len(alone) : 2 * len(alone)], alone, atol=1e-5) and real.shape == padded.shape


def test_server_serves_the_embedded_model_by_default():
    live = BackgroundServer(Settings(warmup_runs=1))
    try:
        with Client(live.url) as client:
            frame = client.generate("a slice of pizza", seed=3, format="png")
            as_named = client.generate("pizza", seed=3, format="png")
        assert (frame.width, frame.height) == (IMAGE_SIZE, IMAGE_SIZE)
        assert frame.model == "emoji"
        assert frame.drawn == "pizza" and as_named.drawn is None  # the concept index's reading, shown to the user
        response = httpx.post(live.url + "/v1/generate", json={"prompt": "a piñata at a party"})
        assert json.loads(response.headers["X-Livegen-Drawn"]) == "piñata" and response.headers["X-Livegen-Drawn"].isascii()
    finally:
        live.stop()
