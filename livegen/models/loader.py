"""Load a few-step diffusers pipeline from local files only and wrap it as an ImageGenerator.

Never touches the network: a folder made with `save_pretrained`, or a repo id that is already
in the local Hugging Face cache. The sampler follows the model family:

    turbo  SD-Turbo, SDXL-Turbo    EulerDiscreteScheduler, trailing spacing, guidance 0
    lcm    LCM, LCM-LoRA           LCMScheduler
    tcd    Hyper-SD, TCD           TCDScheduler
    flux   FLUX.1-schnell / dev    FlowMatchEulerDiscreteScheduler
"""

from __future__ import annotations

import json
import logging
import os

from diffusers import (
    AutoencoderTiny,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
)
from diffusers.utils import logging as diffusers_logging

from livegen.config import ModelConfig
from livegen.models.base import ModelDescription, ModelError
from livegen.models.devices import pick_device, pick_dtype
from livegen.models.concepts import Concepts
from livegen.models.embedded import pipeline_components, reads_real_tokens
from livegen.models.flux import FluxGenerator
from livegen.models.pipeline import DiffusersGenerator
from livegen.models.sources import HOW_TO_GET, resolve_source
from livegen.models.unet import StableDiffusionGenerator, StableDiffusionXLGenerator

log = logging.getLogger(__name__)

if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # the CLI's quiet: diffusers' own bars do not read it
    diffusers_logging.disable_progress_bar()

SAMPLERS = {
    "turbo": lambda config: EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing"),
    "lcm": LCMScheduler.from_config,
    "tcd": TCDScheduler.from_config,
    "flux": FlowMatchEulerDiscreteScheduler.from_config,
}
def detect_family(pipe: DiffusionPipeline) -> str:
    if hasattr(pipe, "transformer") and "Flux" in type(pipe).__name__:
        return "flux"
    scheduler = type(pipe.scheduler).__name__
    return {"LCMScheduler": "lcm", "TCDScheduler": "tcd"}.get(scheduler, "turbo")


def default_guidance(family: str, pipe: DiffusionPipeline) -> float:
    if family == "lcm" and pipe.unet.config.time_cond_proj_dim is not None:
        return 8.0  # LCM distilled with a guidance embedding (LCM-Dreamshaper's default)
    if family == "flux" and pipe.transformer.config.guidance_embeds:
        return 3.5  # FLUX.1-dev
    return 0.0 if family != "lcm" else 1.0


def _generator_class(pipe: DiffusionPipeline, family: str) -> type[DiffusersGenerator]:
    if family == "flux":
        return FluxGenerator
    if hasattr(pipe, "text_encoder_2"):
        return StableDiffusionXLGenerator
    return StableDiffusionGenerator


def load_generator(config: ModelConfig) -> DiffusersGenerator:
    path = resolve_source(config.source)
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{path} is not a diffusers pipeline folder: {index} is missing. {HOW_TO_GET}")
    try:
        json.loads(index.read_text())
    except ValueError as exc:
        raise ModelError(f"{index} is not valid JSON: {exc}") from exc

    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    try:
        extra = pipeline_components(path, dtype)
        pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **extra)
    except Exception as exc:
        raise ModelError(f"could not load the pipeline in {path}: {exc}") from exc
    if not hasattr(pipe, "vae") or not (hasattr(pipe, "unet") or hasattr(pipe, "transformer")):
        raise ModelError(f"{path} holds a {type(pipe).__name__}, not a text-to-image pipeline")

    family = detect_family(pipe) if config.family == "auto" else config.family
    if (family == "flux") != hasattr(pipe, "transformer"):
        raise ModelError(f"family {family!r} does not fit the {type(pipe).__name__} in {path}")
    pipe.scheduler = SAMPLERS[family](pipe.scheduler.config)

    if config.lora:
        lora = resolve_source(config.lora)
        try:
            pipe.load_lora_weights(str(lora), local_files_only=True)
            pipe.fuse_lora()
        except Exception as exc:
            raise ModelError(f"could not load the LoRA in {lora}: {exc}") from exc
    if config.tiny_vae:
        tiny = resolve_source(config.tiny_vae)
        try:
            pipe.vae = AutoencoderTiny.from_pretrained(tiny, torch_dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise ModelError(f"could not load the tiny VAE in {tiny}: {exc}") from exc

    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    description = ModelDescription(
        name=config.display_name,
        family=family,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        sizes=list(config.sizes),
        default_guidance=default_guidance(family, pipe) if config.guidance is None else config.guidance,
        image_to_image=True,
    )
    log.info("loaded %s (%s) from %s on %s/%s", description.name, family, path, device, description.dtype)
    generator = _generator_class(pipe, family)(pipe, description, device, dtype)
    if isinstance(generator, StableDiffusionGenerator):
        generator.real_tokens = reads_real_tokens(path)
        generator.packaged_encoder = "text_encoder" in extra
        generator.concepts = Concepts.read(path)
    if config.compile:
        generator.compile()
    elif device.type == "cuda" and config.cuda_graphs:
        generator.capture_graphs()
    elif device.type == "cpu":
        generator.trace()
    return generator
