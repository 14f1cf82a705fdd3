"""Prompt embeddings for training, in the two ways the shipped model is conditioned at inference.

- Real tokens (what livegen serves): MiniLM token states of the prompt's own tokens alone, then
  repeated up to TEXT_TOKENS. One short forward gives both this and the moderation's sentence
  vector, and plain diffusers takes it as `prompt_embeds`.
- Padded (plain diffusers' `pipe("a kitty")`): the prompt padded to TEXT_TOKENS with the pad
  tokens attended, as StableDiffusionPipeline.encode_prompt does without an attention mask.

The models train on both (`plain_share` of the prompts padded), so either call draws the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from livegen.models.embedded import load_text_encoder, load_tokenizer, real_token_embeds
from livegen.training.dataset import EmojiDataset

READING = "real tokens repeated; padded"  # how `real` and `padded` were read (a changed reading invalidates text.pt)


class PromptEncoder:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer()
        self.model = load_text_encoder().to(self.device).eval()

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(real-token states repeated to fill each prompt's places, padded states); both N x TEXT_TOKENS x 384."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return real_token_embeds(self.tokenizer, self.model, prompts), self.model(ids)[0]


@dataclass
class CaptionEmbeddings:
    real: torch.Tensor  # captions x tokens x 384, float16: real-token states, repeated
    padded: torch.Tensor  # captions x tokens x 384, float16: the padded prompt's states
    owner: torch.Tensor  # captions: the image each caption describes
    empty_real: torch.Tensor  # tokens x 384: the empty prompt, each way
    empty_padded: torch.Tensor

    def __post_init__(self) -> None:
        self.counts = torch.bincount(self.owner)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # captions are stored image by image

    def pick(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The row of one random caption of each image."""
        pick = (torch.rand(len(images), generator=generator) * self.counts[images]).long()
        return self.starts[images] + pick

    def sample(
        self, images: torch.Tensor, generator: torch.Generator, plain_share: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One random caption of each image and the empty prompt, both conditioned the same way:
        padded for a `plain_share` of the images, real tokens for the rest."""
        rows = self.pick(images, generator)
        padded = (torch.rand(len(images), generator=generator) < plain_share).view(-1, 1, 1)
        text = torch.where(padded, self.padded[rows], self.real[rows]).float()
        empty = torch.where(padded, self.empty_padded, self.empty_real).float()
        return text, empty


def embed_captions(workdir: Path, device: str = "cpu", progress: bool = True) -> CaptionEmbeddings:
    """Embed every training caption of the dataset once, both ways; cached in text.pt."""
    cache = workdir / "text.pt"
    if cache.is_file():
        fields = torch.load(cache)
        if fields.pop("reading", None) == READING:  # a cache from an older reading is made again
            return CaptionEmbeddings(**fields)
    dataset = EmojiDataset.load(workdir)
    captions = [(i, c) for i, record in enumerate(dataset.records) for c in record.training_captions]
    encoder = PromptEncoder(device)
    real, padded = [], []
    for start in tqdm(range(0, len(captions), 256), desc="embed captions", disable=not progress):
        chunk_real, chunk_padded = encoder([c for _, c in captions[start : start + 256]])
        real.append(chunk_real.half().cpu())
        padded.append(chunk_padded.half().cpu())
    empty_real, empty_padded = encoder([""])
    fields = {
        "real": torch.cat(real),
        "padded": torch.cat(padded),
        "owner": torch.tensor([i for i, _ in captions]),
        "empty_real": empty_real[0].half().cpu(),
        "empty_padded": empty_padded[0].half().cpu(),
    }
    torch.save({**fields, "reading": READING}, cache)
    return CaptionEmbeddings(**fields)
