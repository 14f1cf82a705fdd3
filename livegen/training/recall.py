"""`livegen train recall`: draw each emoji from its name, the text livegen conditions on.

livegen reads a prompt as its nearest concept's name (models/concepts.py), so at serving time the
student sees the 3,655 names and nothing else. A student sharpened on every caption drew the right
emoji from its own name for only about half of them (docs/model.md). This stage sharpens it again
with the same losses (training.adversarial: the 1-step data term against the real latent, the
PatchGAN, the 2- and 4-step samplers' later timesteps), each emoji conditioned on its name's
real-token reading; a PLAIN_PROMPT_SHARE of them on any of its captions read padded, as plain
diffusers' `pipe(prompt)` reads a prompt, so that call keeps drawing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from livegen.training import adversarial
from livegen.training.recipe import PLAIN_PROMPT_SHARE, RECALL, SharpenRecipe
from livegen.training.text import CaptionEmbeddings

STAGE = "recall"


def names(captions: CaptionEmbeddings, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's name (its first caption) by its real tokens, or any of its captions padded."""
    padded = (torch.rand(len(images), generator=generator) < PLAIN_PROMPT_SHARE).view(-1, 1, 1)
    return torch.where(padded, captions.padded[captions.pick(images, generator)], captions.real[captions.starts[images]]).float()


def train(
    workdir: Path,
    student_folder: Path | None = None,
    recipe: SharpenRecipe = RECALL,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> UNet2DConditionModel:
    """From the UNet of the pipeline `student_folder` (the work folder's sharpened one if absent)
    into workdir/recall."""
    start = (UNet2DConditionModel.from_pretrained(student_folder / "unet", torch_dtype=torch.float32)
             if student_folder is not None else None)
    return adversarial.train(workdir, recipe, steps, device, progress, stage=STAGE, start=start, prompts=names)


def trained(workdir: Path) -> bool:
    return (workdir / STAGE / "unet" / "config.json").is_file()


def load(workdir: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(workdir / STAGE / "unet").eval()
