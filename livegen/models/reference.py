"""Real-size SD-Turbo and SDXL-Turbo architectures with random weights, for GPU speed measurements.

The weights of the real models cannot be downloaded here, but their architectures are public:
the configs below are those of stabilityai/sd-turbo and stabilityai/sdxl-turbo (model_index,
unet, text encoders, vae, scheduler), written out as dicts. Built with diffusers' and
transformers' own classes and random weights, a pipeline computes exactly what the real one
computes per frame (same layers, shapes and kernels), so its speed is the real model's speed;
its pictures are noise. Every result measured with it must say "random weights".

The one substitution: no CLIP vocabulary can be downloaded, so both tokenizers are livegen's
character-level CLIP tokenizer (`livegen.models.tiny.tokenizer`). It pads to the same 77
tokens, so the text encoders run the same sequence length and the same compute; their
embedding tables keep the real 49,408 rows (unused rows cost memory, not time).

    build_reference_pipeline(folder, "sd-turbo")      # pipeline + folder-taesd (AutoencoderTiny)
    load_generator(ModelConfig(source=str(folder), tiny_vae=str(tiny_vae_folder(folder))))
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from livegen.models.tiny import tokenizer

ReferenceArchitecture = Literal["sd-turbo", "sdxl-turbo"]
ARCHITECTURES: tuple[ReferenceArchitecture, ...] = ("sd-turbo", "sdxl-turbo")
MARKER = "livegen-reference.json"  # written last: a folder without it is an interrupted build

# ---------------------------------------------------------------- SD-Turbo (SD 2.1 architecture)

SD_TURBO_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),  # SD 2.x's config names the head *count* this way
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
)

# OpenCLIP ViT-H/14's text tower as SD 2.x ships it: 24 layers trained, the last one dropped.
SD_TURBO_TEXT_ENCODER: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
)

SD_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)

# ---------------------------------------------------------------- SDXL-Turbo (SDXL architecture)

SDXL_TURBO_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled text + 6 time ids x 256
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
)

SDXL_TEXT_ENCODER: dict[str, Any] = dict(  # OpenAI CLIP ViT-L/14
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)

SDXL_TEXT_ENCODER_2: dict[str, Any] = dict(  # OpenCLIP ViT-bigG/14, with its text projection
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=1280,
)

SDXL_VAE: dict[str, Any] = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}

# ---------------------------------------------------------------- shared

# Both Turbo models ship this EulerDiscreteScheduler config ("trailing": one step starts at t=999).
TURBO_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
    timestep_spacing="trailing",
    steps_offset=1,
)

# TAESD / TAESDXL (madebyollin): the same AutoencoderTiny shape for both, 8x, 4 latent channels.
TAESD: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    encoder_block_out_channels=(64, 64, 64, 64),
    decoder_block_out_channels=(64, 64, 64, 64),
    num_encoder_blocks=(1, 3, 3, 3),
    num_decoder_blocks=(3, 3, 3, 1),
    act_fn="relu",
    upsample_fn="nearest",
    latent_channels=4,
    upsampling_scaling_factor=2,
    latent_magnitude=3,
    latent_shift=0.5,
    scaling_factor=1.0,
)

# Ids of livegen's character-level tokenizer: <|startoftext|> 0, <|endoftext|> 1 (also padding).
_TOKEN_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)


def unet(architecture: ReferenceArchitecture) -> UNet2DConditionModel:
    """The denoiser, on the current default device (use `with torch.device("meta")` to count)."""
    return UNet2DConditionModel(**(SD_TURBO_UNET if architecture == "sd-turbo" else SDXL_TURBO_UNET))


def text_encoders(architecture: ReferenceArchitecture) -> list[CLIPTextModel]:
    if architecture == "sd-turbo":
        return [CLIPTextModel(CLIPTextConfig(**SD_TURBO_TEXT_ENCODER, **_TOKEN_IDS))]
    return [CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER, **_TOKEN_IDS)),
            CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2, **_TOKEN_IDS))]


def vae(architecture: ReferenceArchitecture) -> AutoencoderKL:
    return AutoencoderKL(**(SD_VAE if architecture == "sd-turbo" else SDXL_VAE))


def taesd() -> AutoencoderTiny:
    return AutoencoderTiny(**TAESD)


def tiny_vae_folder(path: str | Path) -> Path:
    """Where build_reference_pipeline puts the AutoencoderTiny for `--tiny-vae`: beside the pipeline."""
    path = Path(path)
    return path.with_name(path.name + "-taesd")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_reference_pipeline(
    path: str | Path,
    architecture: ReferenceArchitecture,
    tiny_vae: bool = True,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Path:
    """Build the real-size architecture with random weights and save_pretrained it in fp16.

    Returns `path`, a folder livegen's loader reads like any downloaded pipeline. With
    `tiny_vae`, a random AutoencoderTiny with TAESD's config also goes to `tiny_vae_folder(path)`.
    Weights are initialised on `device` (CUDA if present: seconds, not minutes, for SDXL's
    3.5B parameters) and written as fp16 to halve the size on disk (SD-Turbo 2.6 GB, SDXL-Turbo
    6.9 GB). A folder already built (marker file present) is kept.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    path = Path(path)
    if tiny_vae and not (tiny_vae_folder(path) / MARKER).is_file():
        _save(tiny_vae_folder(path), taesd, device, seed, architecture)
    if not (path / MARKER).is_file():
        _save(path, lambda: _pipeline(architecture), device, seed, architecture)
    return path


def _pipeline(architecture: ReferenceArchitecture):
    scheduler = EulerDiscreteScheduler(**TURBO_SCHEDULER)
    if architecture == "sd-turbo":
        (text_encoder,) = text_encoders(architecture)
        return StableDiffusionPipeline(
            vae=vae(architecture), text_encoder=text_encoder, tokenizer=tokenizer(), unet=unet(architecture),
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    text_encoder, text_encoder_2 = text_encoders(architecture)
    return StableDiffusionXLPipeline(
        vae=vae(architecture), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer(),
        tokenizer_2=tokenizer(), unet=unet(architecture), scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _save(path: Path, build, device, seed: int, architecture: str) -> None:
    if path.exists():
        shutil.rmtree(path)
    torch.manual_seed(seed)
    with torch.device(_device(device)):
        built = build()
    for module in built.components.values() if hasattr(built, "components") else [built]:
        if isinstance(module, torch.nn.Module):
            module.to(dtype=torch.float16).to("cpu")  # cast where built (fast on a GPU), then write
    built.save_pretrained(path)
    del built
    (path / MARKER).write_text(json.dumps({
        "architecture": architecture, "weights": "random", "seed": seed, "dtype": "float16",
        "tokenizer": "livegen character-level CLIP tokenizer (77 tokens), not the real vocabulary",
    }, indent=2))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
