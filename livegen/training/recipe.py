"""Every setting that decides the shipped weights, in one place: `make model` runs exactly this.

Sizes were chosen on the 2-core CPU this project targets (figures in docs/model.md): 64x64
images, an 8x-downsampling autoencoder with 8 latent channels (8x8x8 latents), and a 12M UNet
whose 1-step forward fits the 25 ms budget with the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from livegen.models.embedded import IMAGE_SIZE

LATENT_CHANNELS = 8
SEED = 1234
# Share of training prompts conditioned as plain diffusers' `pipe(prompt)` does (padded, pads attended);
# the rest as livegen serves them (real tokens, repeated). Both calls must draw the prompt.
PLAIN_PROMPT_SHARE = 0.25


@dataclass(frozen=True)
class AutoencoderRecipe:
    channels: int = 32
    encoder_blocks: tuple[int, ...] = (1, 2, 2, 2)
    decoder_blocks: tuple[int, ...] = (2, 2, 2, 1)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    latent_noise: float = 0.1  # decoder sees slightly noisy latents, as it will from the sampler
    latent_penalty: float = 1e-4  # keeps latents inside the decoder's tanh clamp
    edge_weight: float = 0.5
    decoder_steps: int = 1500  # then the decoder alone, on the frozen latents
    decoder_lr: float = 5e-4
    decoder_latent_noise: float = 0.03


@dataclass(frozen=True)
class UNetRecipe:
    block_out_channels: tuple[int, ...] = (64, 128, 192)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    attention_head_dim: int = 32
    text_pool_heads: int = 4  # the pooled prompt also joins the time embedding (addition_embed_type "text")

    def config(self, time_cond_proj_dim: int | None = None) -> dict:
        return dict(
            sample_size=IMAGE_SIZE // 8,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            block_out_channels=self.block_out_channels,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types,
            layers_per_block=1,
            cross_attention_dim=384,
            attention_head_dim=self.attention_head_dim,
            addition_embed_type="text",
            addition_embed_type_num_heads=self.text_pool_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )


@dataclass(frozen=True)
class TeacherRecipe:
    unet: UNetRecipe = field(default_factory=UNetRecipe)
    steps: int = 3000
    batch_size: int = 128
    lr: float = 4e-4
    warmup: int = 300
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # the unconditional side of classifier-free guidance


@dataclass(frozen=True)
class StudentRecipe:
    """Latent consistency distillation (Luo et al. 2023) from the teacher."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 5e-5
    warmup: int = 100
    target_decay: float = 0.99  # the target network; LCM's 0.95 let the student drift (docs/model.md)
    ema_decay: float = 0.995  # the weights that ship
    solver_steps: int = 20  # teacher's DDIM grid: skip k = 1000 / 20 = 50 timesteps
    guidance_min: float = 1.0
    guidance_max: float = 4.0
    guidance_embedding_dim: int = 256
    huber_c: float = 0.001
    data_weight: float = 1.0  # the 1-step prediction against the real latent (distill.one_step_loss)


@dataclass(frozen=True)
class SharpenRecipe:
    """Adversarial fine-tuning of the student (adversarial diffusion distillation, training.adversarial)."""

    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-5
    discriminator_lr: float = 2e-4
    adversarial_weight: float = 0.1  # against the data term's weight of 1
    one_step_share: float = 0.5  # of each batch at the 1-step sampler's t; the rest at the 2/4-step samplers' later t
    ema_decay: float = 0.99


@dataclass(frozen=True)
class AdaptRecipe:
    """Teaching a trained student to read prompts by their real tokens (training.reading)."""

    steps: int = 2400
    batch_size: int = 64
    lr: float = 3e-4  # only the prompt-reading weights train (training.reading.reads_prompt)
    ema_decay: float = 0.99
    one_step_share: float = 0.5  # as in sharpening: the 1-step sampler's t, the rest the 2/4-step samplers' later t


@dataclass(frozen=True)
class ClassifierRecipe:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    feature_dim: int = 256


AUTOENCODER = AutoencoderRecipe()
TEACHER = TeacherRecipe()
STUDENT = StudentRecipe()
SHARPEN = SharpenRecipe()
# Sharpening again, each emoji drawn from its name (training.recall): a longer run at a higher rate,
# as the student learns 3,655 fixed answers rather than a finish (docs/model.md).
RECALL = SharpenRecipe(steps=1000, lr=1e-4)
CLASSIFIER = ClassifierRecipe()
ADAPT = AdaptRecipe()
