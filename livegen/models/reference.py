"""Real-size few-step architectures with random weights, for GPU speed measurements.

The weights of the real models cannot be downloaded here, but their architectures are public:
the configs below are those of stabilityai/sd-turbo, stabilityai/sdxl-turbo,
SimianLuo/LCM_Dreamshaper_v7 (SD 1.5 with LCM's guidance embedding) and
black-forest-labs/FLUX.1-schnell (model_index, denoiser, text encoders, vae, scheduler), written
out as dicts. Built with diffusers' and
transformers' own classes and random weights, a pipeline computes exactly what the real one
computes per frame (same layers, shapes and kernels), so its speed is the real model's speed;
its pictures are noise. Every result measured with it must say "random weights".

The one substitution: no CLIP or T5 vocabulary can be downloaded, so every tokenizer is livegen's
character-level CLIP tokenizer (`livegen.models.tiny.tokenizer`). It pads to the same 77 tokens
(FLUX asks its T5 for 256, and gets 256), so the text encoders run the same sequence length and
the same compute; their embedding tables keep the real rows (unused rows cost memory, not time).

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
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    LCMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from livegen.models.tiny import tokenizer

ReferenceArchitecture = Literal["sd-turbo", "sdxl-turbo", "lcm-sd15", "flux-schnell"]
ARCHITECTURES: tuple[ReferenceArchitecture, ...] = ("sd-turbo", "sdxl-turbo", "lcm-sd15", "flux-schnell")
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

# ---------------------------------------------------------------- LCM (SD 1.5 architecture, LCM_Dreamshaper_v7)

LCM_UNET: dict[str, Any] = {
    **SD_TURBO_UNET,
    "attention_head_dim": 8,  # SD 1.x: 8 heads in every block
    "cross_attention_dim": 768,
    "use_linear_projection": False,
    "time_cond_proj_dim": 256,  # LCM's guidance embedding (w = guidance - 1), no classifier-free pass
}

LCM_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    original_inference_steps=50,
    set_alpha_to_one=True,
    clip_sample=False,
    steps_offset=1,
    timestep_spacing="leading",
)

# ---------------------------------------------------------------- FLUX.1-schnell

FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels, packed 2x2
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=False,  # schnell is timestep-distilled, not guidance-distilled
    axes_dims_rope=(16, 56, 56),
)

FLUX_T5: dict[str, Any] = dict(  # google/t5-v1_1-xxl's encoder
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
)

FLUX_VAE: dict[str, Any] = {
    **SD_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True,
}

FLUX_SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)

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


def unet(architecture: ReferenceArchitecture) -> UNet2DConditionModel | FluxTransformer2DModel:
    """The denoiser, on the current default device (use `with torch.device("meta")` to count)."""
    if architecture == "flux-schnell":
        return FluxTransformer2DModel(**FLUX_TRANSFORMER)
    return UNet2DConditionModel(**{"sd-turbo": SD_TURBO_UNET, "sdxl-turbo": SDXL_TURBO_UNET,
                                   "lcm-sd15": LCM_UNET}[architecture])


def text_encoders(architecture: ReferenceArchitecture) -> list[torch.nn.Module]:
    clip_l = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER, **_TOKEN_IDS))
    if architecture == "sd-turbo":
        return [CLIPTextModel(CLIPTextConfig(**SD_TURBO_TEXT_ENCODER, **_TOKEN_IDS))]
    if architecture == "lcm-sd15":
        return [clip_l]
    if architecture == "flux-schnell":
        return [clip_l, T5EncoderModel(T5Config(**FLUX_T5, **_TOKEN_IDS))]
    return [clip_l, CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2, **_TOKEN_IDS))]


def vae(architecture: ReferenceArchitecture) -> AutoencoderKL:
    return AutoencoderKL(**{"sdxl-turbo": SDXL_VAE, "flux-schnell": FLUX_VAE}.get(architecture, SD_VAE))


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
    """Build the real-size architecture with random weights and save_pretrained it in half precision.

    Returns `path`, a folder livegen's loader reads like any downloaded pipeline. With
    `tiny_vae`, a random AutoencoderTiny with TAESD's config also goes to `tiny_vae_folder(path)`
    (not for FLUX, whose 16 latent channels TAESD does not read). Weights are initialised on
    `device` (CUDA if present: seconds, not minutes, for SDXL's 3.5B parameters) and written in
    the dtype the model ships in, fp16 (bf16 for FLUX), to halve the size on disk (SD-Turbo 2.6 GB,
    SDXL-Turbo 6.9 GB, FLUX.1-schnell 33 GB). A folder already built (marker file present) is kept.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if tiny_vae and architecture == "flux-schnell":
        raise ValueError("TAESD decodes 4 latent channels; FLUX has 16: build flux-schnell with tiny_vae=False")
    path = Path(path)
    dtype = torch.bfloat16 if architecture == "flux-schnell" else torch.float16
    if tiny_vae and not (tiny_vae_folder(path) / MARKER).is_file():
        _save(tiny_vae_folder(path), taesd, device, seed, architecture, dtype)
    if not (path / MARKER).is_file():
        _save(path, lambda: _pipeline(architecture), device, seed, architecture, dtype)
    return path


def _pipeline(architecture: ReferenceArchitecture):
    encoders = text_encoders(architecture)
    if architecture == "flux-schnell":
        clip, t5 = encoders
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae(architecture), text_encoder=clip,
            tokenizer=tokenizer(), text_encoder_2=t5, tokenizer_2=tokenizer(), transformer=unet(architecture),
        )
    if architecture in ("sd-turbo", "lcm-sd15"):
        scheduler = (LCMScheduler(**LCM_SCHEDULER) if architecture == "lcm-sd15"
                     else EulerDiscreteScheduler(**TURBO_SCHEDULER))
        return StableDiffusionPipeline(
            vae=vae(architecture), text_encoder=encoders[0], tokenizer=tokenizer(), unet=unet(architecture),
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    text_encoder, text_encoder_2 = encoders
    return StableDiffusionXLPipeline(
        vae=vae(architecture), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer(),
        tokenizer_2=tokenizer(), unet=unet(architecture), scheduler=EulerDiscreteScheduler(**TURBO_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )


def _save(path: Path, build, device, seed: int, architecture: str, dtype: torch.dtype) -> None:
    if path.exists():
        shutil.rmtree(path)
    torch.manual_seed(seed)
    with torch.device(_device(device)):
        built = build()
    for module in built.components.values() if hasattr(built, "components") else [built]:
        if isinstance(module, torch.nn.Module):
            module.to(dtype=dtype).to("cpu")  # cast where built (fast on a GPU), then write
    built.save_pretrained(path)
    del built
    (path / MARKER).write_text(json.dumps({
        "architecture": architecture, "weights": "random", "seed": seed, "dtype": str(dtype).removeprefix("torch."),
        "tokenizer": "livegen character-level CLIP tokenizer (77 tokens), not the real vocabulary",
    }, indent=2))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
