"""Stage 4: sharpen the student adversarially, as adversarial diffusion distillation does
(ADD: Sauer et al. 2023, "Adversarial Diffusion Distillation", the recipe behind SD-Turbo).

One network evaluation from pure noise regresses towards the average of what a prompt could
mean, so the consistency-distilled student's 1-step pictures are right but soft. Here a
discriminator judges the student's decoded pictures against decoded real latents (the
autoencoder's own blur is on both sides). ADD's discriminator reads frozen DINOv2 features; we
have no pretrained image network offline, so ours is a small PatchGAN trained from scratch, with
a projection onto the pooled prompt so the prompt is judged too. The latent variant (LADD: Sauer
et al. 2024), with the frozen teacher as the discriminator's backbone, was tried first and could
not tell our 8x8 latents apart (docs/model.md). The student keeps its data term against the
real latent, which keeps each picture on its prompt while the adversarial term makes it crisp.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torch import nn

from livegen.models.devices import pick_device
from livegen.training import autoencoder, distill, loop, teacher
from livegen.training.recipe import PLAIN_PROMPT_SHARE, SEED, SHARPEN, STUDENT, SharpenRecipe
from livegen.training.text import CaptionEmbeddings, embed_captions

@functools.cache
def later_timesteps() -> torch.Tensor:
    """Where the 2- and 4-step samplers call the student after their first step."""
    sampler = distill.sampler()
    later: set[int] = set()
    for steps in (2, 4):
        sampler.set_timesteps(steps)
        later |= set(sampler.timesteps[1:].tolist())
    return torch.tensor(sorted(later))


def sampled_timesteps(batch: int, one_step_share: float, generator: torch.Generator) -> torch.Tensor:
    """The samplers' timesteps: the 1-step's t = 999 for `one_step_share` of the batch, then the
    2- and 4-step samplers' later ones, so sharpening the first step leaves the later ones sharp."""
    later = later_timesteps()
    first = torch.rand(batch, generator=generator) < one_step_share
    pick = later[torch.randint(len(later), (batch,), generator=generator)]
    return torch.where(first, torch.full_like(pick, distill.TOP_TIMESTEP), pick)


def student_input(
    real: torch.Tensor, t: torch.Tensor, solver: distill.Solver, generator: torch.Generator
) -> torch.Tensor:
    """What the sampler hands the student at t: pure noise at the top, a noised latent below it."""
    noise = torch.randn(real.shape, generator=generator).to(real)
    top = (t == distill.TOP_TIMESTEP).view(-1, 1, 1, 1)
    return torch.where(top, noise, solver.noised(real, noise, t))


class Discriminator(nn.Module):
    """A PatchGAN on the decoded pictures, with a projection onto the pooled prompt."""

    def __init__(self, text_dim: int, width: int = 64):
        super().__init__()
        widths = (3, width, width * 2, width * 4)
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.score = nn.Conv2d(widths[-1], 1, 1)
        self.prompt = nn.Linear(text_dim, widths[-1])

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.body(images)
        projection = (h.mean(dim=(2, 3)) * self.prompt(text.mean(dim=1))).sum(dim=1) / h.shape[1] ** 0.5
        return self.score(h).mean(dim=(1, 2, 3)) + projection


def student_sample(
    student: UNet2DConditionModel,
    solver: distill.Solver,
    real: torch.Tensor,
    text: torch.Tensor,
    generator: torch.Generator,
    recipe: SharpenRecipe = SHARPEN,
) -> torch.Tensor:
    """The student's clean-latent prediction at a sampler timestep, from what the sampler hands it there."""
    start, t, w_embedding = sampler_call(real, solver, generator, recipe.one_step_share)
    return distill.predict_clean(student, solver, start, t, text, w_embedding)


def sampler_call(
    real: torch.Tensor, solver: distill.Solver, generator: torch.Generator, one_step_share: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample, timestep, guidance embedding) of a random sampler call on these latents."""
    t = sampled_timesteps(len(real), one_step_share, generator).to(real.device)
    start = student_input(real, t, solver, generator)
    _, w_embedding = distill.random_guidance(len(real), generator, STUDENT)
    return start, t, w_embedding.to(real)


def discriminator_loss(
    discriminator: Discriminator, real: torch.Tensor, fake: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """Hinge loss: real pictures above +1, the student's below -1."""
    return F.relu(1 - discriminator(real, text)).mean() + F.relu(1 + discriminator(fake, text)).mean()


def decode(vae: AutoencoderTiny, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents to pictures in [-1, 1], as the pipeline decodes them."""
    return vae.decode(latents / vae.config.scaling_factor).sample


def any_caption(captions: CaptionEmbeddings, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random training caption of each image, read as livegen or as `pipe(prompt)` reads it."""
    return captions.sample(images, generator, PLAIN_PROMPT_SHARE)[0]


def train(
    workdir: Path,
    recipe: SharpenRecipe = SHARPEN,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
    stage: str = "sharpen",
    start: UNet2DConditionModel | None = None,
    prompts: Callable[[CaptionEmbeddings, torch.Tensor, torch.Generator], torch.Tensor] = any_caption,
) -> UNet2DConditionModel:
    """Sharpen `start` (the student stage's UNet if absent) into workdir/`stage`, each image
    conditioned on what `prompts` picks for it."""
    dev = pick_device(device)
    latents = teacher.scaled_latents(workdir)
    captions = embed_captions(workdir, progress=progress)
    solver = distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps)

    torch.manual_seed(SEED)
    student = (start if start is not None else distill.load(workdir)).to(dev).train()
    vae = autoencoder.load(workdir, "decoder").to(dev).requires_grad_(False)
    discriminator = Discriminator(student.config.cross_attention_dim).to(dev)
    ema = EMAModel(student.parameters(), decay=recipe.ema_decay)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.lr, betas=(0.0, 0.99), weight_decay=0.0)
    discriminator_optimizer = torch.optim.AdamW(
        discriminator.parameters(), lr=recipe.discriminator_lr, betas=(0.0, 0.99)
    )
    total = steps or recipe.steps

    def train_step(step: int, generator: torch.Generator) -> dict[str, float]:
        index = torch.randint(len(latents), (recipe.batch_size,), generator=generator)
        text = prompts(captions, index, generator).to(dev)
        real = latents[index].to(dev)
        fake = student_sample(student, solver, real, text, generator, recipe)
        fake_pictures = decode(vae, fake)
        with torch.no_grad():
            real_pictures = decode(vae, real)

        # The student: fool the discriminator, and stay on the prompt.
        adversarial = -discriminator(fake_pictures, text).mean()
        data = distill.pseudo_huber(fake, real, STUDENT.huber_c)
        optimizer.zero_grad(set_to_none=True)
        (recipe.adversarial_weight * adversarial + data).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        ema.step(student.parameters())

        judged = discriminator_loss(discriminator, real_pictures, fake_pictures.detach(), text)
        discriminator_optimizer.zero_grad(set_to_none=True)
        judged.backward()
        discriminator_optimizer.step()
        return {"adversarial": adversarial.item(), "data": data.item(), "discriminator": judged.item()}

    objects = {"model": student, "discriminator": discriminator, "ema": ema, "optimizer": optimizer,
               "discriminator_optimizer": discriminator_optimizer}  # fmt: skip
    loop.run(loop.Stage(workdir / stage), total, train_step, objects, SEED, progress=progress)
    ema.copy_to(student.parameters())
    student.eval().cpu().save_pretrained(workdir / stage / "unet")
    return student


def load(workdir: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(workdir / "sharpen" / "unet").eval()
