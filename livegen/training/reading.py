"""`livegen train adapt`: teach a trained student to read prompts by their real tokens.

A student trained on prompts padded to 32 tokens, the padding attended, needs a 32-token text
forward for the picture besides the short one moderation reads (issue 21's typing path). Read by
its real tokens instead (models/embedded.py), the same weights draw the prompt far less often.
Rather than learn the pictures again from data, the student learns to draw from the new reading
what it drew from the old one: its frozen copy, given the same sample, timestep and guidance with
the prompt read padded, is the target, at the samplers' timesteps. A share of the prompts stays
padded against the same target, so plain diffusers' `pipe(prompt)` keeps drawing what it drew.
Only what reads the prompt learns (cross-attention's keys and values, the pooled prompt's
embedding); what draws stays as it was: after 600 steps this kept both readings closer to the
original than training every weight did (docs/model.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel

from livegen.models.devices import pick_device
from livegen.training import adversarial, distill, loop, teacher
from livegen.training.recipe import ADAPT, PLAIN_PROMPT_SHARE, SEED, STUDENT, AdaptRecipe
from livegen.training.text import embed_captions


def reads_prompt(name: str) -> bool:
    """A UNet parameter that turns the prompt's token states into what the picture is drawn from."""
    return ".attn2.to_k." in name or ".attn2.to_v." in name or name.startswith("add_embedding.")


def reading_loss(
    student: UNet2DConditionModel,
    frozen: UNet2DConditionModel,
    solver: distill.Solver,
    real: torch.Tensor,
    read: torch.Tensor,
    padded: torch.Tensor,
    generator: torch.Generator,
    one_step_share: float,
) -> torch.Tensor:
    """The student's clean-latent prediction from the prompt as `read`, against the frozen copy's
    from the prompt padded, both from what a sampler hands them at one of its timesteps."""
    start, t, w_embedding = adversarial.sampler_call(real, solver, generator, one_step_share)
    with torch.no_grad():
        goal = distill.predict_clean(frozen, solver, start, t, padded, w_embedding)
    return distill.pseudo_huber(distill.predict_clean(student, solver, start, t, read, w_embedding), goal, STUDENT.huber_c)


def train(
    workdir: Path,
    student_folder: Path,
    recipe: AdaptRecipe = ADAPT,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> UNet2DConditionModel:
    """Adapt the UNet of the pipeline `student_folder` into workdir/adapt."""
    dev = pick_device(device)
    latents = teacher.scaled_latents(workdir)
    captions = embed_captions(workdir, progress=progress)
    solver = distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps)

    torch.manual_seed(SEED)
    weights = student_folder / "unet"
    frozen = UNet2DConditionModel.from_pretrained(weights, torch_dtype=torch.float32).to(dev).eval().requires_grad_(False)
    student = UNet2DConditionModel.from_pretrained(weights, torch_dtype=torch.float32).to(dev).train()
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(reads_prompt(name))
    ema = EMAModel(student.parameters(), decay=recipe.ema_decay)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=0.0)

    def train_step(step: int, generator: torch.Generator) -> dict[str, float]:
        index = torch.randint(len(latents), (recipe.batch_size,), generator=generator)
        rows = captions.pick(index, generator)
        plain = (torch.rand(len(rows), generator=generator) < PLAIN_PROMPT_SHARE).view(-1, 1, 1)
        padded = captions.padded[rows].float()
        read = torch.where(plain, padded, captions.real[rows].float())
        loss = reading_loss(student, frozen, solver, latents[index].to(dev), read.to(dev), padded.to(dev),
                            generator, recipe.one_step_share)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        ema.step(student.parameters())
        return {"loss": loss.item()}

    objects = {"model": student, "ema": ema, "optimizer": optimizer}
    loop.run(loop.Stage(workdir / "adapt"), steps or recipe.steps, train_step, objects, SEED, progress=progress)
    ema.copy_to(student.parameters())
    student.eval().cpu().save_pretrained(workdir / "adapt" / "unet")
    return student


def adapted(workdir: Path) -> bool:
    return (workdir / "adapt" / "unet" / "config.json").is_file()


def load(workdir: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(workdir / "adapt" / "unet").eval()
