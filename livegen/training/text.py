"""Prompt embeddings for training, computed exactly as StableDiffusionPipeline.encode_prompt does
at inference: MiniLM token states of the prompt padded to TEXT_TOKENS, no attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from livegen.models.embedded import load_text_encoder, load_tokenizer
from livegen.training.dataset import EmojiDataset


class PromptEncoder:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer()
        self.model = load_text_encoder().to(self.device).eval()

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.model(ids.to(self.device))[0]


@dataclass
class CaptionEmbeddings:
    embeddings: torch.Tensor  # captions x tokens x 384, float16
    owner: torch.Tensor  # captions: the image each caption describes
    empty: torch.Tensor  # tokens x 384: the empty prompt

    def __post_init__(self) -> None:
        self.counts = torch.bincount(self.owner)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # captions are stored image by image

    def sample(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random caption of each image."""
        pick = (torch.rand(len(images), generator=generator) * self.counts[images]).long()
        return self.embeddings[self.starts[images] + pick].float()


def embed_captions(workdir: Path, device: str = "cpu", progress: bool = True) -> CaptionEmbeddings:
    """Embed every caption of the dataset once; cached in text.pt."""
    cache = workdir / "text.pt"
    if cache.is_file():
        return CaptionEmbeddings(**torch.load(cache))
    dataset = EmojiDataset.load(workdir)
    captions = [(i, c) for i, record in enumerate(dataset.records) for c in record.captions]
    encoder = PromptEncoder(device)
    chunks = [
        encoder([c for _, c in captions[start : start + 256]]).half().cpu()
        for start in tqdm(range(0, len(captions), 256), desc="embed captions", disable=not progress)
    ]
    result = CaptionEmbeddings(
        embeddings=torch.cat(chunks),
        owner=torch.tensor([i for i, _ in captions]),
        empty=encoder([""])[0].half().cpu(),
    )
    torch.save({"embeddings": result.embeddings, "owner": result.owner, "empty": result.empty}, cache)
    return result
