"""Prompt moderation: a policy of terms, patterns and category descriptions, checked before compute.

A policy is a TOML file (the shipped one is `policy.toml` beside this module):

    threshold = 0.6                # cosine similarity that blocks, unless a category sets its own

    [[category]]
    name = "graphic_violence"
    terms = ["gore"]               # whole words or phrases, any case
    patterns = ['\\bbehead\\w*']  # regular expressions, any case
    descriptions = ["a mutilated body covered in blood"]
    threshold = 0.55               # optional

Terms and patterns are exact; descriptions catch paraphrases: a prompt is embedded with
all-MiniLM-L6-v2 (mean-pooled over its tokens, unit length, as it was trained to be compared) and
blocked when its cosine similarity to a description reaches the threshold. A prompt with emoji is
checked twice, as typed and with each emoji written as its English name and aliases ("a 🔫" as "a
water pistol (gun)"): models draw what an emoji shows, and a policy names it in words. The
embedded model runs MiniLM as its text encoder already; other models' encoders (CLIP, T5) give
similarities on another scale, so thresholds calibrated once would not carry over, and moderation
loads its own MiniLM beside them. Verdicts are cached per prompt, like prompt embeddings.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pooling is numpy's now; torch names only the encoder's tensors
    import torch

    from livegen.models.tokens import Tokenizer

DEFAULT_POLICY = Path(__file__).resolve().parent / "policy.toml"
SPEECH_POLICY = Path(__file__).resolve().parent / "speech_policy.toml"  # what a voice must not say
VERDICT_CACHE_SIZE = 1024
QUOTED_CHARS = 120  # of a prompt's reading with its emoji named, in a verdict's reason

TextEmbedder = Callable[[list[str]], np.ndarray]  # texts -> (N, D) unit vectors


def sentence_embedder(tokenizer: Tokenizer, encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> TextEmbedder:
    """MiniLM's sentence vectors: `encoder(ids, mask)`'s last hidden states averaged over the real
    tokens, unit length. Pooled in numpy: a torch op that size starts an OpenMP team on the calling
    thread (the speech runner's), and a second team on the 2-core CPU made every picture ~1.5x slower."""

    def embed(texts: list[str]) -> np.ndarray:
        ids, attention = tokenizer(texts)
        hidden = encoder(ids, attention).numpy().astype(np.float32)
        mask = attention.numpy()[..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

    return embed


@lru_cache(maxsize=1)
def minilm_embedder() -> TextEmbedder:
    """A MiniLM of moderation's own, shared by the runners whose model has another text encoder and
    by reply moderation. In onnxruntime on one thread: called between pieces of speech, a torch
    forward took 23-48 ms against 10 ms alone, slowed by Kokoro's spinning onnxruntime threads."""
    from livegen.models.embedded import TEXT_TOKENS, minilm_path
    from livegen.models.onnx_text import OnnxTextEncoder, minilm_graph
    from livegen.models.tokens import Tokenizer

    return sentence_embedder(Tokenizer.read(minilm_path(), TEXT_TOKENS), OnnxTextEncoder(minilm_graph(), threads=1))


def emoji_spelled_out(prompt: str) -> str:
    """`prompt` with each emoji written as its CLDR English name and the `emoji` package's aliases,
    and stray variation selectors (invisible alone) dropped, so "b\ufe0fee" reads "bee"; `prompt`
    itself if it has neither."""
    if prompt.isascii():
        return prompt
    import emoji

    def words(name: str) -> str:
        return name.strip(":").replace("_", " ")

    def named(_chars: str, data: dict) -> str:
        aliases = ", ".join(words(alias) for alias in data.get("alias", ()))
        return f" {words(data['en'])} ({aliases}) " if aliases else f" {words(data['en'])} "

    text = emoji.replace_emoji(prompt, replace=named)
    return prompt if text == prompt else " ".join(text.split())


class PolicyError(ValueError):
    """A policy file that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class Category:
    name: str
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()
    threshold: float | None = None


@dataclass(frozen=True)
class Policy:
    categories: tuple[Category, ...]
    threshold: float = 0.6
    source: str = "built in"

    @classmethod
    def load(cls, path: str | Path = DEFAULT_POLICY) -> Policy:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"cannot read the moderation policy {path}: {exc}") from exc
        try:
            threshold = float(raw.get("threshold", 0.6))
            categories = tuple(
                Category(name=str(c["name"]), terms=tuple(c.get("terms", ())), patterns=tuple(c.get("patterns", ())),
                         descriptions=tuple(c.get("descriptions", ())),
                         threshold=None if c.get("threshold") is None else float(c["threshold"]))
                for c in raw.get("category", ()))
            for category in categories:
                for pattern in category.patterns:
                    re.compile(pattern)
        except (KeyError, TypeError, ValueError, re.error) as exc:
            raise PolicyError(f"moderation policy {path}: {type(exc).__name__}: {exc} "
                              "(each [[category]] needs a name; terms, patterns, descriptions are lists)") from exc
        if not 0 < threshold <= 1 or any(c.threshold is not None and not 0 < c.threshold <= 1 for c in categories):
            raise PolicyError(f"moderation policy {path}: thresholds are cosine similarities in (0, 1]")
        return cls(categories, threshold, str(path))


@dataclass(frozen=True)
class Verdict:
    blocked: bool
    category: str | None = None
    reason: str | None = None  # what matched, for the operator's log and the client's message


ALLOWED = Verdict(blocked=False)


class Moderator:
    """Checks prompts against one policy; `embed` is the serving model's text encoder. `drawn`: what
    the model draws a prompt as, where it draws prompts as other texts (the embedded model's concept
    index: the nearest emoji's name), or None. A prompt that passes is blocked when what it is drawn
    as is: a policy that names a thing stops its picture however it was asked for."""

    def __init__(self, policy: Policy, embed: TextEmbedder | None, drawn: Callable[[str], str | None] | None = None):
        self.policy = policy
        self._embed = embed
        self._drawn = drawn
        self._words = [(c, re.compile(r"\b(?:" + "|".join(re.escape(t) for t in c.terms) + r")\b", re.IGNORECASE))
                       for c in policy.categories if c.terms]
        self._patterns = [(c, re.compile(p, re.IGNORECASE)) for c in policy.categories for p in c.patterns]
        self._descriptions = [(c, d) for c in policy.categories for d in c.descriptions]
        self._vectors = embed([d for _, d in self._descriptions]) if embed and self._descriptions else None
        self.check = lru_cache(maxsize=VERDICT_CACHE_SIZE)(self._check)

    def _check(self, prompt: str) -> Verdict:
        verdict = self._verdict(prompt)
        if verdict.blocked or self._drawn is None or (drawn := self._drawn(prompt)) is None:
            return verdict
        of_drawn = self._verdict(drawn)
        return dataclasses.replace(of_drawn, reason=f"drawn as {drawn!r}, {of_drawn.reason}") if of_drawn.blocked else verdict

    def _verdict(self, prompt: str) -> Verdict:
        readings = [(prompt, "")]
        if (named := emoji_spelled_out(prompt)) != prompt:
            quoted = textwrap.shorten(named, QUOTED_CHARS, placeholder=" ...")  # a thousand emoji name thousands of words
            readings.append((named, f" in {quoted!r}, its emoji named"))
        for category, words in self._words:  # the policy's order, each on both readings: its first category wins
            for text, where in readings:
                if match := words.search(text):
                    return Verdict(True, category.name, f"term {match.group(0)!r}{where}")
        for category, pattern in self._patterns:
            for text, where in readings:
                if pattern.search(text):
                    return Verdict(True, category.name, f"pattern {pattern.pattern!r}{where}")
        if self._vectors is None or not prompt.strip():
            return ALLOWED
        similarities = self._vectors @ self._embed([text for text, _ in readings]).T  # type: ignore[misc]
        for index in np.argsort(-similarities.max(1)):
            category, description = self._descriptions[index]
            threshold = category.threshold or self.policy.threshold
            reading = int(np.argmax(similarities[index]))
            if similarities[index, reading] >= threshold:
                return Verdict(True, category.name,
                               f"close to {description!r} ({similarities[index, reading]:.2f}){readings[reading][1]}")
        return ALLOWED
