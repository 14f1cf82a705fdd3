"""Stage 3: the student, step-distilled from the teacher by latent consistency distillation
(LCM: Luo et al. 2023, "Latent Consistency Models", after Song et al. 2023, "Consistency Models").

The student starts as a copy of the teacher with a guidance embedding (`time_cond_proj_dim`,
zero-initialised so it starts exactly as the teacher). Each step: noise a latent to a timestep
t on the teacher's solver grid (20 steps: t = 49, 99, ..., 999), let the teacher (with
classifier-free guidance w) take one DDIM step to t - 50, and train the student so its
boundary-conditioned prediction of the clean latent at t matches the slowly-moving target
network's prediction at t - 50. The boundary scalings and the grid are LCMScheduler's, so the
saved student samples with the stock scheduler in 1-4 steps.

A data term joins the consistency loss (as Kim et al. 2023, "Consistency Trajectory Models",
regularise theirs with a denoising loss on real data): from pure noise at t = 999, exactly the
1-step sampler's input, the student's prediction is pulled towards the real latent. Consistency
alone reaches t = 999 only through the chain of 20 links, each adding its error.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import LCMScheduler, UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.training_utils import EMAModel

from livegen.models.devices import pick_device
from livegen.training import loop, teacher
from livegen.training.recipe import PLAIN_PROMPT_SHARE, SEED, STUDENT, StudentRecipe
from livegen.training.text import CaptionEmbeddings, embed_captions

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCMScheduler's default
TOP_TIMESTEP = 999  # where every sampler starts, from pure noise


def sampler(recipe: StudentRecipe = STUDENT) -> LCMScheduler:
    return LCMScheduler.from_config(
        teacher.noise_schedule().config,
        original_inference_steps=recipe.solver_steps,
        timestep_scaling=TIMESTEP_SCALING,
    )


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip, c_out of LCMScheduler: the prediction is the input itself at t = 0."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The embedding StableDiffusionPipeline gives `timestep_cond` for w = guidance - 1."""
    return get_timestep_embedding(w * 1000.0, dim, flip_sin_to_cos=False, downscale_freq_shift=1)


class Solver:
    """The teacher's grid (for 20 steps: t = 49, 99, ..., 999) and one DDIM step down it."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int):
        ratio = len(alphas_cumprod) // steps
        self.timesteps = torch.arange(1, steps + 1) * ratio - 1
        self.skip = ratio
        self.alpha = alphas_cumprod.sqrt()
        self.sigma = (1 - alphas_cumprod).sqrt()

    def split(self, v: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v-prediction -> (clean latent, noise)."""
        a, s = self.at(self.alpha, t), self.at(self.sigma, t)
        return a * sample - s * v, a * v + s * sample

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The sample at t made of a clean latent and noise: with predicted ones, a DDIM step to t."""
        return self.at(self.alpha, t) * x0 + self.at(self.sigma, t) * eps

    @staticmethod
    def at(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return table.to(t.device)[t].view(-1, 1, 1, 1)


def student_from(teacher_unet: UNet2DConditionModel, recipe: StudentRecipe = STUDENT) -> UNet2DConditionModel:
    student = UNet2DConditionModel.from_config({**teacher_unet.config, "time_cond_proj_dim": recipe.guidance_embedding_dim})
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("time_embedding.cond_proj") for k in missing), missing
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def random_guidance(batch: int, generator: torch.Generator, recipe: StudentRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """w = guidance - 1 for guidance drawn uniformly from the recipe's range, and its embedding."""
    guidance = recipe.guidance_min + (recipe.guidance_max - recipe.guidance_min) * torch.rand(batch, generator=generator)
    w = guidance - 1
    return w, guidance_embedding(w, recipe.guidance_embedding_dim)


def predict_clean(unet: UNet2DConditionModel, solver: Solver, sample: torch.Tensor, t: torch.Tensor,
                  text: torch.Tensor, w_embedding: torch.Tensor) -> torch.Tensor:
    """The consistency function: the boundary-conditioned clean-latent prediction at t."""
    c_skip, c_out = (c.view(-1, 1, 1, 1) for c in boundary_scalings(t))
    v = unet(sample, t, text, timestep_cond=w_embedding).sample
    return c_skip * sample + c_out * solver.split(v, sample, t)[0]


def consistency_loss(
    student: UNet2DConditionModel,
    target: UNet2DConditionModel,
    teacher_unet: UNet2DConditionModel,
    solver: Solver,
    latents: torch.Tensor,
    text: torch.Tensor,
    empty: torch.Tensor,
    generator: torch.Generator,
    recipe: StudentRecipe = STUDENT,
) -> torch.Tensor:
    device, batch = latents.device, len(latents)
    index = torch.randint(len(solver.timesteps), (batch,), generator=generator)
    t = solver.timesteps[index].to(device)
    t_prev = (t - solver.skip).clamp(min=0)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    noisy = solver.noised(latents, noise, t)

    w, w_embedding = random_guidance(batch, generator, recipe)
    w, w_embedding = w.to(device), w_embedding.to(latents)
    prediction = predict_clean(student, solver, noisy, t, text, w_embedding)

    with torch.no_grad():
        both = teacher_unet(noisy.repeat(2, 1, 1, 1), t.repeat(2), torch.cat([text, empty])).sample
        x0_text, eps_text = solver.split(both[:batch], noisy, t)
        x0_empty, eps_empty = solver.split(both[batch:], noisy, t)
        w4 = w.view(-1, 1, 1, 1)
        x0 = x0_text + w4 * (x0_text - x0_empty)
        eps = eps_text + w4 * (eps_text - eps_empty)
        previous = solver.noised(x0, eps, t_prev)
        goal = predict_clean(target, solver, previous, t_prev, text, w_embedding)

    return pseudo_huber(prediction, goal, recipe.huber_c)


def one_step_loss(
    student: UNet2DConditionModel,
    solver: Solver,
    latents: torch.Tensor,
    text: torch.Tensor,
    generator: torch.Generator,
    recipe: StudentRecipe = STUDENT,
) -> torch.Tensor:
    """The 1-step sample (pure noise in, at the top of the grid) against the real latent."""
    batch = len(latents)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = solver.timesteps[-1:].repeat(batch).to(latents.device)
    _, w_embedding = random_guidance(batch, generator, recipe)
    prediction = predict_clean(student, solver, noise, t, text, w_embedding.to(latents))
    return pseudo_huber(prediction, latents, recipe.huber_c)


def pseudo_huber(prediction: torch.Tensor, goal: torch.Tensor, c: float) -> torch.Tensor:
    return (((prediction.float() - goal.float()) ** 2 + c**2).sqrt() - c).mean()


def train(
    workdir: Path,
    recipe: StudentRecipe = STUDENT,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> UNet2DConditionModel:
    dev = pick_device(device)
    latents = teacher.scaled_latents(workdir)
    captions: CaptionEmbeddings = embed_captions(workdir, progress=progress)
    teacher_unet = teacher.load(workdir).to(dev).requires_grad_(False)
    solver = Solver(teacher.noise_schedule().alphas_cumprod, recipe.solver_steps)

    torch.manual_seed(SEED)
    student = student_from(teacher_unet, recipe).to(dev).train()
    target = copy.deepcopy(student).requires_grad_(False)
    ema = EMAModel(student.parameters(), decay=recipe.ema_decay)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.lr, weight_decay=0.0)
    total = steps or recipe.steps
    lr_schedule = loop.warmup_cosine(optimizer, recipe.warmup, total)

    def train_step(step: int, generator: torch.Generator) -> dict[str, float]:
        index = torch.randint(len(latents), (recipe.batch_size,), generator=generator)
        text, empty = (x.to(dev) for x in captions.sample(index, generator, PLAIN_PROMPT_SHARE))
        batch = latents[index].to(dev)
        consistency = consistency_loss(student, target, teacher_unet, solver, batch, text, empty, generator, recipe)
        data = one_step_loss(student, solver, batch, text, generator, recipe)
        loss = consistency + recipe.data_weight * data
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        with torch.no_grad():
            for goal, live in zip(target.parameters(), student.parameters()):
                goal.lerp_(live, 1 - recipe.target_decay)
        ema.step(student.parameters())
        return {"consistency": consistency.item(), "data": data.item()}

    objects = {"model": student, "target": target, "ema": ema, "optimizer": optimizer, "schedule": lr_schedule}
    loop.run(loop.Stage(workdir / "student"), total, train_step, objects, SEED, progress=progress)
    ema.copy_to(student.parameters())
    student.eval().cpu().save_pretrained(workdir / "student" / "unet")
    return student


def load(workdir: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(workdir / "student" / "unet").eval()
