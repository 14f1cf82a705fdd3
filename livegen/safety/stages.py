"""The safety stages of one image runner, built from the settings once its model is loaded."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator

import torch

from livegen.config import SafetyConfig
from livegen.models.base import ImageGenerator, PromptEmbedding
from livegen.protocol import Blocked, Generate
from livegen.safety.checks import OutputChecker, load_checker
from livegen.safety.moderation import DEFAULT_POLICY, Moderator, Policy, TextEmbedder, minilm_embedder
from livegen.safety.watermark import Watermarker

log = logging.getLogger(__name__)


def _embedder(generator: ImageGenerator, encode_prompt: Callable[[str], PromptEmbedding]) -> TextEmbedder:
    """The model's own text encoder when it is MiniLM (the embedded model's is), else moderation's.

    One text (a prompt) goes through the runner's prompt cache: its one forward gives the vector
    moderation compares and the embedding the denoiser takes, and the generation that follows finds
    it cached. Several (the policy's descriptions, a prompt with its emoji named) are read in one
    forward, for their vectors alone: the 16 descriptions took 0.07 s at a start, not 0.22 s.
    """
    if generator.reads_sentences:
        return lambda texts: (encode_prompt(texts[0]).sentence[None] if len(texts) == 1
                              else generator.read_prompt.sentences(texts))
    return minilm_embedder()


class SafetyStages:
    """Prompt moderation before compute; the output check and the watermark after decoding."""

    def __init__(self, config: SafetyConfig, generator: ImageGenerator, frame_numbers: Iterator[int],
                 encode_prompt: Callable[[str], PromptEmbedding]):
        self.moderator = None
        if config.moderation:
            policy = Policy.load(config.policy or DEFAULT_POLICY)
            if config.threshold is not None:
                policy = dataclasses.replace(policy, threshold=config.threshold)
            # What a prompt is drawn as comes through the runner's prompt cache, which embedding it has just filled.
            drawn = (lambda prompt: encode_prompt(prompt).drawn) if generator.reads_sentences else None
            self.moderator = Moderator(policy, _embedder(generator, encode_prompt), drawn)
        device = getattr(generator, "device", torch.device("cpu"))
        self.checker_name = config.output_checker
        self.checker: OutputChecker | None = load_checker(config.output_checker, device) if config.output_checker else None
        if self.checker is None:
            log.warning("%s: no output checker configured; frames pass on prompt moderation alone", generator.name)
        self.watermarker = Watermarker(config.server_id) if config.watermark else None
        self._frame_numbers = frame_numbers

    def moderate(self, request: Generate) -> Blocked | None:
        if self.moderator is None:
            return None
        for prompt in (request.prompt, request.blend_prompt):
            if prompt and (verdict := self.moderator.check(prompt)).blocked:
                return Blocked(id=request.id, stage="prompt", category=verdict.category or "policy",
                               message=f"the prompt breaks the moderation policy ({verdict.category}: {verdict.reason})")
        return None

    def check(self, images: torch.Tensor) -> list[str | None]:
        return self.checker(images) if self.checker is not None else [None] * len(images)

    def watermark(self, images: torch.Tensor) -> torch.Tensor:
        if self.watermarker is None:
            return images
        return self.watermarker.embed(images, list(itertools.islice(self._frame_numbers, len(images))))

    def describe(self) -> dict:
        """What /readyz reports."""
        return {
            "moderation": self.moderator.policy.source if self.moderator else None,
            "output_checker": self.checker_name,
            "watermark": self.watermarker is not None,
        }
