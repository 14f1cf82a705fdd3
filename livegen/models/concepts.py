"""Reading a prompt as the nearest concept a closed-vocabulary model was trained to draw.

livegen's own model draws the 3,655 emoji it was trained on, and its UNet carries a prompt's
meaning poorly from the training captions to sentences worded otherwise ("a bug that makes
honey"), where MiniLM's sentence similarity alone finds the right emoji (docs/model.md). A model
folder with a `concepts/` index therefore has each prompt drawn as its nearest concept's name:

1. the prompt's MiniLM sentence vector (moderation's, computed anyway) against each concept's
   mean caption vector, which weighs all the ways the training captions say it;
2. the closest CANDIDATES re-ranked by spelling similarity to their captions (RapidFuzz WRatio):
   what a sentence vector blurs, such as "dark" against "medium-dark skin tone", or a typing slip;
3. the name (the concept's first caption) conditions the picture. Moderation still reads what
   the user typed.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOLDER = "concepts"
VECTORS = "vectors.npy"
PHRASES = "phrases.json.gz"
CANDIDATES = 20  # by sentence similarity, then re-ranked by spelling
SPELLING_WEIGHT = 1.0  # of WRatio / 100 against cosine similarity; chosen on the caption split (docs/model.md)


@dataclass(frozen=True)
class Concepts:
    vectors: np.ndarray  # concepts x width, float32, unit length: each concept's mean caption vector
    phrases: tuple[tuple[str, ...], ...]  # each concept's captions, its name first

    @classmethod
    def build(cls, phrases: Sequence[Sequence[str]], embed: Callable[[list[str]], np.ndarray],
              batch: int = 256) -> Concepts:
        """`embed`: unit sentence vectors of texts (moderation.sentence_embedder's)."""
        texts = [text for group in phrases for text in group]
        owners = np.repeat(np.arange(len(phrases)), [len(group) for group in phrases])
        vectors = np.concatenate([embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
        sums = np.zeros((len(phrases), vectors.shape[1]), np.float32)
        np.add.at(sums, owners, vectors)
        return cls(_unit(sums), tuple(tuple(group) for group in phrases))

    @classmethod
    def read(cls, model_folder: Path) -> Concepts | None:
        """The folder's index, or None when it has none (the prompt is then read as typed)."""
        folder = model_folder / FOLDER
        if not (folder / VECTORS).is_file():
            return None
        phrases = json.loads(gzip.decompress((folder / PHRASES).read_bytes()))
        return cls(_unit(np.load(folder / VECTORS).astype(np.float32)), tuple(map(tuple, phrases)))

    def write(self, model_folder: Path) -> None:
        folder = model_folder / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / VECTORS, self.vectors.astype(np.float16))
        (folder / PHRASES).write_bytes(gzip.compress(json.dumps(self.phrases).encode(), mtime=0))

    def ranked(self, prompt: str, sentence: np.ndarray) -> list[int]:
        """The CANDIDATES concepts `prompt` (whose unit sentence vector is `sentence`) most likely
        means, the likeliest first."""
        from rapidfuzz import fuzz

        # einsum, not BLAS: a BLAS thread team beside torch's made this 8 ms rather than 0.25 on the 2-core CPU
        similarity = np.einsum("cw,w->c", self.vectors, sentence.astype(np.float32))
        count = min(CANDIDATES, len(similarity))
        candidates = np.argpartition(-similarity, count - 1)[:count]
        text = prompt.lower()
        spelling = np.array([max(fuzz.WRatio(text, phrase) for phrase in self.phrases[i]) for i in candidates])
        return candidates[np.argsort(-(similarity[candidates] + SPELLING_WEIGHT * spelling / 100), kind="stable")].tolist()

    def drawn_text(self, prompt: str, sentence: np.ndarray) -> str:
        """What the model draws for `prompt`: its nearest concept's name; a blank prompt (the
        unconditional side of guidance) stays blank."""
        return self.phrases[self.ranked(prompt, sentence)[0]][0] if prompt.strip() else prompt


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
