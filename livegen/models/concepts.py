"""Reading a prompt as the nearest concept a closed-vocabulary model was trained to draw.

livegen's own model draws the 3,655 emoji it was trained on, and its UNet carries a prompt's
meaning poorly from the training captions to sentences worded otherwise ("a bug that makes
honey"), where MiniLM's sentence similarity alone finds the right emoji (docs/model.md). A model
folder with a `concepts/` index therefore has each prompt drawn as its nearest concept's name:

1. the prompt's MiniLM sentence vector (moderation's, computed anyway) against each concept's
   mean caption vector, which weighs all the ways the training captions say it. A word that is
   neither English nor used by the captions is first respelled as the nearest word they use
   often ("elefant" as "elephant"), and the respelled prompt read again;
2. the closest CANDIDATES re-ranked by spelling similarity to their captions (RapidFuzz WRatio):
   what a sentence vector blurs, such as "dark" against "medium-dark skin tone", or a typing slip;
3. the name (the concept's first caption) conditions the picture. Moderation reads what the
   user typed, then the name (safety/moderation.py).

An emoji typed in the prompt, which MiniLM reads as an unknown token, is read as its concept's
name ("a 🐝" as "a honeybee") where the index knows each concept's emoji.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TextEmbedder = Callable[[list[str]], np.ndarray]  # texts to unit sentence vectors, texts x width

FOLDER = "concepts"
VECTORS = "vectors.npy"
PHRASES = "phrases.json.gz"
EMOJI = "emoji.json"  # each concept's emoji, where concepts have one
VARIATION_SELECTOR = "\ufe0f"  # typed with or without it: the same emoji
WORD = re.compile(r"[a-z]+")
TOKEN = re.compile(r"[a-z]+|[^a-z]+")  # words and what lies between them, so a respelled prompt keeps its shape
CANDIDATES = 20  # by sentence similarity, then re-ranked by spelling
SPELLING_WEIGHT = 1.0  # of WRatio / 100 against cosine similarity; chosen on the caption split (docs/model.md)
# Respelling, chosen on the caption split and generated typing slips of the names (docs/model.md):
COMMON = 3  # a word in at least this many captions is a word (a generated typing slip is in one)
RESPELL_CUTOFF = 70  # the least RapidFuzz ratio of a word to its respelling
SHORTEST_RESPELLED = 4  # letters; shorter words are left alone
READ_WORDS = 32  # spelling is read in a prompt's first words only: MiniLM reads 32 tokens, bounding the work


@dataclass(frozen=True)
class Concepts:
    vectors: np.ndarray  # concepts x width, float32, unit length: each concept's mean caption vector
    phrases: tuple[tuple[str, ...], ...]  # each concept's captions, its name first
    known_words: frozenset[str] = frozenset()  # words never respelled (`read`)
    emoji: tuple[str, ...] = ()  # each concept's emoji, or none
    word_counts: Counter[str] = field(init=False, repr=False, compare=False)  # how many captions use each word
    common_words: list[str] = field(init=False, repr=False, compare=False)  # those COMMON captions use
    concept_of_emoji: dict[str, int] = field(init=False, repr=False, compare=False)  # without variation selectors
    names: frozenset[str] = field(init=False, repr=False, compare=False)  # each concept's first caption

    def __post_init__(self) -> None:  # counted once here, not on the first prompt with a slip
        counts = Counter(WORD.findall("\n".join(phrase for group in self.phrases for phrase in group).lower()))
        object.__setattr__(self, "word_counts", counts)
        object.__setattr__(self, "common_words", [word for word, count in counts.items() if count >= COMMON])
        keys = {char.replace(VARIATION_SELECTOR, ""): i for i, char in enumerate(self.emoji)}
        object.__setattr__(self, "concept_of_emoji", keys)
        object.__setattr__(self, "names", frozenset(self.names_in_order()))

    @classmethod
    def build(cls, phrases: Sequence[Sequence[str]], embed: TextEmbedder, emoji: Sequence[str] = (),
              batch: int = 256) -> Concepts:
        """`embed`: unit sentence vectors of texts (moderation.sentence_embedder's); `emoji`: each
        concept's, if any. What `read` gives from the folder `write` fills, but for its known words."""
        texts = [text for group in phrases for text in group]
        owners = np.repeat(np.arange(len(phrases)), [len(group) for group in phrases])
        vectors = np.concatenate([embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
        sums = np.zeros((len(phrases), vectors.shape[1]), np.float32)
        np.add.at(sums, owners, vectors)
        return cls(_unit(sums), tuple(tuple(group) for group in phrases), emoji=tuple(emoji))

    @classmethod
    def read(cls, model_folder: Path) -> Concepts | None:
        """The folder's index, or None when it has none (the prompt is then read as typed). Words
        never respelled: English words, and those its text encoder knows whole (its tokenizer's vocab.txt)."""
        folder = model_folder / FOLDER
        if not (folder / VECTORS).is_file():
            return None
        phrases = json.loads(gzip.decompress((folder / PHRASES).read_bytes()))
        emoji = json.loads((folder / EMOJI).read_text(encoding="utf-8")) if (folder / EMOJI).is_file() else ()
        return cls(_unit(np.load(folder / VECTORS).astype(np.float32)), tuple(map(tuple, phrases)),
                   vocabulary(model_folder / "tokenizer") | english_words(), tuple(emoji))

    def respelled(self, prompt: str) -> str:
        """`prompt` with each word of 4 letters or more that is neither a known word nor common in the
        captions replaced by the likeliest common caption word it could be a slip of; `prompt`
        itself if none is."""
        from rapidfuzz import fuzz, process

        pieces, changed = [], False
        for piece in TOKEN.findall(prompt.lower()):
            if (len(piece) >= SHORTEST_RESPELLED and piece.isalpha() and piece not in self.known_words
                    and self.word_counts[piece] < COMMON):
                near = process.extract(piece, self.common_words, scorer=fuzz.ratio, score_cutoff=RESPELL_CUTOFF, limit=5)
                if near:  # the closest; of equals, the word more captions use
                    piece, changed = max(near, key=lambda match: (match[1], self.word_counts[match[0]]))[0], True
            pieces.append(piece)
        return "".join(pieces) if changed else prompt

    def write(self, model_folder: Path) -> None:
        folder = model_folder / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / VECTORS, self.vectors.astype(np.float16))
        (folder / PHRASES).write_bytes(gzip.compress(json.dumps(self.phrases).encode(), mtime=0))
        if self.emoji:
            (folder / EMOJI).write_text(json.dumps(self.emoji, ensure_ascii=False), encoding="utf-8")

    def emoji_as_concepts(self, prompt: str) -> str:
        """`prompt` with each emoji the index knows written as its concept's name; `prompt` itself if
        none. The `emoji` package finds them, the longest sequence first: "👍🏽" is one concept, not a
        thumb and a skin tone."""
        if prompt.isascii() or not self.concept_of_emoji:
            return prompt
        import emoji

        def name(chars: str, _data: dict) -> str:
            concept = self.concept_of_emoji.get(chars.replace(VARIATION_SELECTOR, ""))
            return chars if concept is None else f" {self.name(concept)} "

        return emoji.replace_emoji(prompt, replace=name)

    def reading(self, prompt: str) -> tuple[str, bool]:
        """What the index reads for `prompt`: its first READ_WORDS words, its emoji named and its
        slips respelled, and whether that changed a word (if not, the prompt's own sentence vector
        stands for the reading's)."""
        read = " ".join(prompt.split()[:READ_WORDS])
        named = " ".join(self.emoji_as_concepts(read).split()[:READ_WORDS])
        respelled = self.respelled(named)
        return respelled, respelled != read

    def ranked_reading(self, text: str, sentence: np.ndarray) -> list[int]:
        """The CANDIDATES concepts `text` (a prompt's `reading`) most likely means, the likeliest
        first; `sentence`: its unit sentence vector (moderation.sentence_embedder's)."""
        from rapidfuzz import fuzz, process

        # einsum, not BLAS: a BLAS thread team beside torch's made this 8 ms rather than 0.25 on the 2-core CPU
        similarity = np.einsum("cw,w->c", self.vectors, sentence.astype(np.float32))
        count = min(CANDIDATES, len(similarity))
        candidates = np.argpartition(-similarity, count - 1)[:count]
        text = text.lower()
        spelling = np.array([process.extractOne(text, self.phrases[i], scorer=fuzz.WRatio)[1] for i in candidates])
        return candidates[np.argsort(-(similarity[candidates] + SPELLING_WEIGHT * spelling / 100), kind="stable")].tolist()

    def ranked(self, prompt: str, embed: TextEmbedder, sentence: np.ndarray | None = None) -> list[int]:
        """`ranked_reading` of a prompt as typed. `embed`: unit sentence vectors of texts
        (moderation.sentence_embedder's); `sentence`: the prompt's, if known."""
        text, respelled = self.reading(prompt)
        if respelled or sentence is None:
            sentence = embed([text])[0]
        return self.ranked_reading(text, sentence)

    def name(self, concept: int) -> str:
        return self.phrases[concept][0]

    def names_in_order(self) -> list[str]:
        """Each concept's name, in the concepts' order."""
        return [group[0] for group in self.phrases]

    def drawn_text(self, prompt: str, embed: TextEmbedder, sentence: np.ndarray | None = None) -> str:
        """What the model draws for `prompt`: its nearest concept's name; a blank prompt (the
        unconditional side of guidance) stays blank."""
        return self.name(self.ranked(prompt, embed, sentence)[0]) if prompt.strip() else prompt


@functools.cache
def english_words() -> frozenset[str]:
    """The 160,000 words of pyspellchecker's English dictionary: "donut" or "ladybug" is a word,
    not a slip of a caption's word, though MiniLM splits it into pieces. Kept in the cache folder
    as plain lines, keyed by the dictionary's file: a start reads them in a tenth of the time
    pyspellchecker takes to load its word frequencies."""
    import spellchecker

    from livegen import cache

    name = f"words/english-{cache.file_key(Path(spellchecker.__file__).parent / 'resources' / 'en.json.gz')}.txt"
    if (kept := cache.read(name)) is not None:
        return frozenset(kept.decode().split("\n"))
    words = frozenset(spellchecker.SpellChecker().word_frequency.keys())
    cache.keep(name, "\n".join(sorted(words)).encode())
    return words


def vocabulary(tokenizer_folder: Path) -> frozenset[str]:
    """The whole words of a WordPiece vocab.txt (its "##" pieces left out); empty without one."""
    file = tokenizer_folder / "vocab.txt"
    if not file.is_file():
        return frozenset()
    return frozenset(word for word in file.read_text(encoding="utf-8").split() if not word.startswith("##"))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
