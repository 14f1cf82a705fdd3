"""The diffusers backend loads real pipeline folders of each family and runs their samplers."""

from __future__ import annotations

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from livegen.config import ModelConfig
from livegen.models.base import BatchSpec, ModelError
from livegen.models.loader import load_generator
from livegen.models.tiny import build_tiny_vae
from livegen.models.traced import TracedUNet


def run(generator, spec: BatchSpec, prompts: list[str], seeds: list[int], image: np.ndarray | None = None):
    noise = torch.cat([generator.make_noise(spec.width, spec.height, s) for s in seeds])
    latents = None
    if image is not None:
        latents = generator.encode_images(np.stack([image] * len(seeds)))
    out = generator.denoise(spec, [generator.encode_prompt(p) for p in prompts], noise, latents, seeds,
                            lambda: False)
    return generator.decode(out)


@pytest.mark.parametrize(
    ("architecture", "sampler", "family", "scheduler"),
    [
        ("sd", "turbo", "turbo", "EulerDiscreteScheduler"),
        ("sd", "lcm", "lcm", "LCMScheduler"),
        ("sd", "tcd", "tcd", "TCDScheduler"),
        ("sdxl", "turbo", "turbo", "EulerDiscreteScheduler"),
        ("flux", "turbo", "flux", "FlowMatchEulerDiscreteScheduler"),
    ],
)
def test_each_family_loads_with_its_sampler_and_generates(tiny_models, architecture, sampler, family, scheduler):
    generator = load_generator(ModelConfig(source=str(tiny_models(architecture, sampler)), sizes=["64x64"]))
    assert generator.description.family == family
    assert type(generator.scheduler).__name__ == scheduler
    if family == "turbo":
        assert generator.scheduler.config.timestep_spacing == "trailing"
        assert generator.description.default_guidance == 0.0
    text = run(generator, BatchSpec(64, 64, 2, generator.description.default_guidance, None), ["a cat", "a dog"], [1, 2])
    assert text.shape == (2, 64, 64, 3) and text.dtype == np.uint8
    assert not np.array_equal(text[0], text[1])
    image = np.full((64, 64, 3), 90, np.uint8)
    edited = run(generator, BatchSpec(64, 64, 1, 0.0, 0.5), ["a cat"], [1], image)
    assert edited.shape == (1, 64, 64, 3)


@pytest.mark.parametrize(("architecture", "sampler"), [("sd", "turbo"), ("sd", "lcm"), ("sdxl", "turbo")])
def test_the_traced_unet_gives_the_eager_pictures_at_every_batch_size(tiny_models, architecture, sampler):
    config = ModelConfig(source=str(tiny_models(architecture, sampler)), sizes=["64x64"])
    traced, eager = load_generator(config), load_generator(config)
    assert isinstance(traced.denoiser, TracedUNet)  # on the CPU
    eager.denoiser = eager.pipe.unet
    for spec, prompts in ((BatchSpec(64, 64, 2, 0.0, None), ["a cat"]),  # the trace is made at batch 1
                          (BatchSpec(64, 64, 2, 0.0, None), ["a cat", "a dog", "a bird"]),
                          (BatchSpec(64, 64, 1, 4.0, None), ["a cat", "a dog"])):  # guidance: CFG or embedded
        seeds = list(range(len(prompts)))
        difference = run(traced, spec, prompts, seeds).astype(int) - run(eager, spec, prompts, seeds).astype(int)
        assert np.abs(difference).max() <= 1
    assert len(traced.denoiser.traces) == 1


def test_classifier_free_guidance_changes_the_picture(tiny_sd):
    generator = load_generator(ModelConfig(source=str(tiny_sd), sizes=["64x64"]))
    plain = run(generator, BatchSpec(64, 64, 1, 0.0, None), ["a cat"], [3])
    guided = run(generator, BatchSpec(64, 64, 1, 4.0, None), ["a cat"], [3])
    assert plain.shape == guided.shape
    assert not np.array_equal(plain, guided)


def test_same_seed_same_picture_whatever_the_batch(tiny_sd):
    generator = load_generator(ModelConfig(source=str(tiny_sd), sizes=["64x64"]))
    spec = BatchSpec(64, 64, 2, 0.0, None)
    alone = run(generator, spec, ["a cat"], [7])[0]
    again = run(generator, spec, ["a cat"], [7])[0]
    batched = run(generator, spec, ["a dog", "a cat"], [5, 7])[1]
    assert np.array_equal(alone, again)
    assert np.abs(alone.astype(int) - batched.astype(int)).max() <= 2


def test_strength_changes_how_far_the_input_moves(tiny_sd):
    generator = load_generator(ModelConfig(source=str(tiny_sd), sizes=["64x64"]))
    image = np.full((64, 64, 3), 90, np.uint8)
    light = run(generator, BatchSpec(64, 64, 1, 0.0, 0.1), ["a cat"], [1], image)
    heavy = run(generator, BatchSpec(64, 64, 1, 0.0, 1.0), ["a cat"], [1], image)
    assert np.abs(light.astype(int) - 90).mean() < np.abs(heavy.astype(int) - 90).mean()


def test_tiny_decoder_replaces_the_vae(tiny_sd, tmp_path):
    tiny_vae = build_tiny_vae(tmp_path / "taesd")
    generator = load_generator(ModelConfig(source=str(tiny_sd), tiny_vae=str(tiny_vae), sizes=["64x64"]))
    assert isinstance(generator.vae, AutoencoderTiny)
    assert run(generator, BatchSpec(64, 64, 1, 0.0, None), ["a cat"], [1]).shape == (1, 64, 64, 3)


def test_reduced_precision_is_applied(tiny_sd):
    generator = load_generator(ModelConfig(source=str(tiny_sd), dtype="bfloat16", sizes=["64x64"]))
    assert generator.pipe.unet.dtype == torch.bfloat16
    assert generator.description.dtype == "bfloat16"
    assert run(generator, BatchSpec(64, 64, 1, 0.0, None), ["a cat"], [1]).shape == (1, 64, 64, 3)


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match=str(missing)):
        load_generator(ModelConfig(source=str(missing)))


def test_folder_without_model_index_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="model_index.json"):
        load_generator(ModelConfig(source=str(tmp_path)))


def test_broken_weights_are_a_clear_error(tiny_models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models("sd", "turbo"), broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match=str(broken)):
        load_generator(ModelConfig(source=str(broken)))


def test_repo_id_not_in_the_local_cache_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="local Hugging Face cache"):
        load_generator(ModelConfig(source="stabilityai/sd-turbo"))


def test_family_that_does_not_fit_the_pipeline_is_refused(tiny_sd):
    with pytest.raises(ModelError, match="does not fit"):
        load_generator(ModelConfig(source=str(tiny_sd), family="flux"))


def test_model_index_that_is_not_json_is_a_clear_error(tmp_path):
    (tmp_path / "model_index.json").write_text("{oops")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_generator(ModelConfig(source=str(tmp_path)))
