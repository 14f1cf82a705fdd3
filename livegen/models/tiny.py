"""Tiny random-weight pipelines of the real architectures, built with diffusers' own classes.

For tests, benchmarks and trying the server without a download. The weights are random, so the
pictures are noise; the loading code, the samplers and the compute path are the real ones.
A small CLIP BPE tokenizer over single characters is built in memory: no vocabulary download.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

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
    TCDScheduler,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

Architecture = Literal["sd", "sdxl", "flux"]
Sampler = Literal["turbo", "lcm", "tcd"]
TEXT_WIDTH = 32
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def tokenizer() -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _clip(with_projection: bool = False, width: int = TEXT_WIDTH, layers: int = 2) -> CLIPTextModel:
    config = CLIPTextConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=len(tokenizer()),
        max_position_embeddings=77,
        projection_dim=width,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _vae(latent_channels: int, **extra: float) -> AutoencoderKL:
    # Four blocks: the 8x spatial compression of the real VAEs, at a fraction of the width.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        **extra,
    )


def _unet(channels: tuple[int, ...], cross_attention_dim: int, **extra: object) -> UNet2DConditionModel:
    depth = len(channels)
    return UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (depth - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (depth - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=min(channels),
        sample_size=8,  # 64 px: the tiny models' size (diffusers 0.24, StreamDiffusion's, refuses none)
        **extra,
    )


def _unet_scheduler(sampler: Sampler):
    return {"turbo": EulerDiscreteScheduler, "lcm": LCMScheduler, "tcd": TCDScheduler}[sampler](**SD_SCHEDULER)


def build_tiny_pipeline(
    path: str | Path,
    architecture: Architecture = "sd",
    sampler: Sampler = "turbo",
    unet_channels: tuple[int, ...] = (32, 64),
    seed: int = 0,
    text_width: int = TEXT_WIDTH,
    text_layers: int = 2,
) -> Path:
    """Build a random-weight pipeline and save it with save_pretrained; returns the folder.

    `text_width` and `text_layers` size the text encoder of the "sd" architecture (benchmarks
    use a MiniLM-sized one, 384 wide and 6 deep, so text encoding costs what it really does).
    """
    torch.manual_seed(seed)
    if architecture == "sd":
        pipe = StableDiffusionPipeline(
            vae=_vae(4),
            text_encoder=_clip(width=text_width, layers=text_layers),
            tokenizer=tokenizer(),
            unet=_unet(unet_channels, text_width),
            scheduler=_unet_scheduler(sampler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif architecture == "sdxl":
        time_dim = 8
        pipe = StableDiffusionXLPipeline(
            vae=_vae(4),
            text_encoder=_clip(),
            text_encoder_2=_clip(with_projection=True),
            tokenizer=tokenizer(),
            tokenizer_2=tokenizer(),
            unet=_unet(
                unet_channels,
                2 * TEXT_WIDTH,
                addition_embed_type="text_time",
                addition_time_embed_dim=time_dim,
                projection_class_embeddings_input_dim=6 * time_dim + TEXT_WIDTH,
            ),
            scheduler=_unet_scheduler(sampler),
        )
    else:
        t5 = T5EncoderModel(
            T5Config(d_model=TEXT_WIDTH, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=len(tokenizer()))
        )
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
            vae=_vae(4, shift_factor=0.1, scaling_factor=0.5),
            text_encoder=_clip(),
            tokenizer=tokenizer(),
            text_encoder_2=t5,
            tokenizer_2=tokenizer(),
            transformer=FluxTransformer2DModel(
                patch_size=1,
                in_channels=16,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=TEXT_WIDTH,
                pooled_projection_dim=TEXT_WIDTH,
                axes_dims_rope=(4, 4, 8),
            ),
        )
    path = Path(path)
    pipe.save_pretrained(path)
    return path


def build_tiny_vae(path: str | Path, seed: int = 0) -> Path:
    """A random AutoencoderTiny with the 8x compression and 4 latent channels of TAESD."""
    torch.manual_seed(seed)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).save_pretrained(path)
    return Path(path)
