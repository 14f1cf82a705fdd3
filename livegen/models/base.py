"""The one interface every image model offers the engine: a warm, batched generator.

A generator knows one model on one device. It has no idea of sessions or sockets; the engine
calls its stages in order (encode prompt, encode image, denoise, decode) and times each one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


class ModelError(Exception):
    """A model that cannot be loaded or cannot serve a request; the message says what to do."""


@dataclass(frozen=True)
class BatchSpec:
    """What inputs must share to run in one forward pass."""

    width: int
    height: int
    steps: int
    guidance: float
    strength: float | None  # None: text-to-image


@dataclass
class PromptEmbedding:
    """Encoded text for one prompt (batch dimension 1). Fields depend on the model family.

    `sentence`: the prompt's unit sentence vector, when the model's text encoder is the one
    moderation reads (MiniLM): the same forward made both, so a new prompt costs one, not two.
    `drawn`: the text the picture is drawn from, when the model draws the prompt as another (the
    embedded model's concept index: the nearest emoji's name), so moderation can check it too.
    """

    tensors: dict[str, torch.Tensor]
    sentence: np.ndarray | None = None
    drawn: str | None = None

    def blend(self, other: PromptEmbedding, weight: float) -> PromptEmbedding:
        """Linear interpolation towards `other`: 0 is this prompt, 1 is the other."""
        return PromptEmbedding({key: torch.lerp(value, other.tensors[key], weight)
                                for key, value in self.tensors.items()})

    @staticmethod
    def stack(embeddings: list[PromptEmbedding]) -> dict[str, torch.Tensor]:
        keys = embeddings[0].tensors
        return {key: torch.cat([e.tensors[key] for e in embeddings]) for key in keys}


@dataclass(frozen=True)
class ModelDescription:
    name: str
    family: str
    device: str
    dtype: str
    sizes: list[tuple[int, int]]
    default_guidance: float
    image_to_image: bool


class ImageGenerator(ABC):
    """A loaded image model: stages the engine runs on batches of inputs."""

    description: ModelDescription

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def reads_sentences(self) -> bool:
        """Whether `encode_prompt` also gives the sentence vector moderation compares (see PromptEmbedding)."""
        return False

    def warmed(self) -> None:
        """Called once the engine's warm-up has run every shape."""

    def describe_acceleration(self) -> dict:
        """How the model runs (traced, compiled, CUDA graphs and what they cover), for /readyz."""
        return {"mode": "eager"}

    def warm_guidances(self) -> list[float]:
        """A guidance for each shape guidance can give the denoiser (the warm-up runs each), the default last."""
        return [self.description.default_guidance]

    @abstractmethod
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        """Encode one prompt. Engines cache the result; it must not depend on anything else."""

    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latents before any packing."""

    def make_noise(self, width: int, height: int, seed: int) -> torch.Tensor:
        """Initial latent noise for one image, the same for the same seed and size."""
        # Drawn on the CPU so the same seed gives the same picture on every device.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((1, *self.latent_shape(width, height)), generator=generator)
        return noise.to(self.device, self.dtype)

    @staticmethod
    def generators(seeds: list[int]) -> list[torch.Generator]:
        """Per-image generators for the sampler's noise, so an image does not depend on what it was batched with."""
        # seed + 1: the sampler's noise must not repeat the initial noise drawn from `seed`.
        return [torch.Generator(device="cpu").manual_seed(seed + 1) for seed in seeds]

    @abstractmethod
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """Images (B, H, W, 3) uint8 at the batch size -> latents, for image-to-image."""

    @abstractmethod
    def denoise(
        self,
        spec: BatchSpec,
        prompts: list[PromptEmbedding],
        noise: torch.Tensor,
        image_latents: torch.Tensor | None,
        seeds: list[int],
        should_stop: Callable[[], bool],
    ) -> torch.Tensor | None:
        """Run the sampler on a batch; None if should_stop() said so between steps."""

    @abstractmethod
    def decode_on_device(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, H, W, 3) uint8, still on the model's device: output checks and
        the watermark run there, batched, before the frames are copied out."""

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> images (B, H, W, 3) uint8 on the host."""
        return self.decode_on_device(latents).cpu().numpy()
