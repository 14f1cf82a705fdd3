"""Stage 2: the teacher, a text-conditioned latent diffusion UNet sampled with many steps.

v-prediction on Stable Diffusion's noise schedule (scaled-linear betas, 1000 steps), so any
diffusers sampler runs it; min-SNR loss weighting (Hang et al. 2023) for faster convergence;
10% empty prompts so classifier-free guidance works; an EMA of the weights is what ships.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_snr

from livegen.models.devices import pick_device
from livegen.training import autoencoder, loop
from livegen.training.recipe import PLAIN_PROMPT_SHARE, SEED, TEACHER, TeacherRecipe
from livegen.training.text import CaptionEmbeddings, embed_captions

MIN_SNR_GAMMA = 5.0


def noise_schedule() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
        steps_offset=1,
    )


def build(recipe: TeacherRecipe = TEACHER) -> UNet2DConditionModel:
    torch.manual_seed(SEED)
    return UNet2DConditionModel(**recipe.unet.config())


def scaled_latents(workdir: Path) -> torch.Tensor:
    vae = autoencoder.load(workdir)
    return torch.load(workdir / "latents.pt") * vae.config.scaling_factor


def diffusion_loss(
    unet: UNet2DConditionModel,
    schedule: DDPMScheduler,
    latents: torch.Tensor,
    text: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, schedule.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = schedule.add_noise(latents, noise, t)
    target = schedule.get_velocity(latents, noise, t)
    prediction = unet(noisy, t.to(latents.device), text).sample
    snr = compute_snr(schedule, t)
    weight = (snr.clamp(max=MIN_SNR_GAMMA) / (snr + 1)).to(latents)
    per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def conditioning(
    captions: CaptionEmbeddings, index: torch.Tensor, dropout: float, generator: torch.Generator
) -> torch.Tensor:
    text, empty = captions.sample(index, generator, PLAIN_PROMPT_SHARE)
    drop = torch.rand(len(index), generator=generator) < dropout
    text[drop] = empty[drop]
    return text


def train(
    workdir: Path,
    recipe: TeacherRecipe = TEACHER,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> UNet2DConditionModel:
    dev = pick_device(device)
    latents = scaled_latents(workdir)
    captions = embed_captions(workdir, progress=progress)
    schedule = noise_schedule()
    unet = build(recipe).to(dev).train()
    ema = EMAModel(unet.parameters(), decay=recipe.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.01)
    total = steps or recipe.steps
    lr_schedule = loop.warmup_cosine(optimizer, recipe.warmup, total)

    def train_step(step: int, generator: torch.Generator) -> dict[str, float]:
        index = torch.randint(len(latents), (recipe.batch_size,), generator=generator)
        text = conditioning(captions, index, recipe.caption_dropout, generator).to(dev)
        loss = diffusion_loss(unet, schedule, latents[index].to(dev), text, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        return {"loss": loss.item()}

    objects = {"model": unet, "ema": ema, "optimizer": optimizer, "schedule": lr_schedule}
    loop.run(loop.Stage(workdir / "teacher"), total, train_step, objects, SEED, progress=progress)
    ema.copy_to(unet.parameters())
    unet.eval().cpu().save_pretrained(workdir / "teacher" / "unet")
    return unet


def load(workdir: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(workdir / "teacher" / "unet").eval()
