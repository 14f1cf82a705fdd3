"""What every family of voices offers the speech runner, and the text handling they share.

A family (Kokoro in `speech.py`, Piper in `piper.py`) turns text into phonemes, cuts text into
phrases, runs a phrase's phonemes through its model's text half (`prepare`), and decodes the
phrase's audio in pieces (`decode`), each piece decoded with context frames on both sides that are
dropped, and crossfaded into the piece before it. Every family speaks at SAMPLE_RATE, so a client
hears one rate whichever voice speaks. The runner sees only this interface.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from livegen import cache
from livegen.models import phonemes as g2p
from livegen.models.base import ModelError
from livegen.models.onnx_session import GraphSource

SAMPLE_RATE = 24_000  # what every voice speaks at
JAPANESE = "ja"  # the language of text with kana (`voices.py`); every other language is an espeak-ng one
FADE = 120  # samples (5 ms) crossfaded where two pieces of a phrase meet
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\s*\n\s*")
CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")
_WORD = re.compile(r"\S+")
# A word is enough to warm (sessions, arenas, phonemizer): a later phrase of any length was no slower
# than the next one, and a whole sentence per language cost seconds of the start (bench cold).
WARM_UP_TEXT = {"en-us": "Ready.", JAPANESE: "はい。"}
Halves = tuple[bytes, bytes]  # a voice model's text half and its decoder, as ONNX graphs
T = TypeVar("T")

log = logging.getLogger(__name__)


def onnx_providers(device: str) -> list[str]:
    """onnxruntime's providers for a device, or a ModelError saying what to install."""
    import onnxruntime as ort

    providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}.get(device)
    if providers is None:
        raise ModelError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
    if providers[0] not in ort.get_available_providers():
        raise ModelError(f"onnxruntime here has no {providers[0]}: pip install onnxruntime-gpu")
    return providers


def open_halves(key: str, cut: Callable[[], Halves | None],
                open: Callable[[tuple[GraphSource, GraphSource] | None], T]) -> T:
    """`open` a voice model's text half and decoder, each as a source to read it from (None: it cannot
    be cut). Cut once and kept in the cache folder under `key`: cutting a model takes a start about a
    second. A kept copy that does not open is cut again and replaced."""
    names = (f"speech/{key}.text.onnx", f"speech/{key}.decoder.onnx")
    if all([cache.use(name) for name in names]):  # both marked used, though read only to optimize
        try:
            return open(tuple(lambda name=name: cache.read(name) for name in names))  # type: ignore[arg-type]
        except Exception:  # damaged on disk
            log.warning("the kept halves of %s did not open; cutting the model again", key, exc_info=True)
    halves = cut()
    for name, graph in zip(names, halves or ()):
        cache.keep(name, graph)
    return open(halves and tuple(lambda graph=graph: graph for graph in halves))  # type: ignore[arg-type]


class SpeechError(ModelError):
    """A request the speech model refuses; `code` is what the wire `error` message carries."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class Phrase:
    """A phrase through a model's text half, its audio still to decode (`VoiceModel.decode`)."""

    features: dict[str, np.ndarray]  # the decoder's inputs over all frames
    frames: int
    lead: int  # frames of silence before the first word
    word_ends: list[int]  # frames where a word or the phrase ends: where pieces are cut
    voice: str  # the voice it is said in
    frame_s: float  # seconds of audio a frame makes
    decoded: int = 0  # frames decoded so far
    held: np.ndarray | None = None  # the last piece's final FADE samples, faded into the next

    @property
    def done(self) -> bool:
        return self.decoded >= self.frames


def sounds(phonemes: str) -> bool:
    """Whether phonemes say anything: a phoneme letter, not only punctuation, spaces, stress or
    length marks (what espeak writes for ")))", "^" or "✓")."""
    return any(unicodedata.category(c) in ("Ll", "Lu", "Lo") for c in phonemes)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as the 16-bit little-endian PCM the wire's `audio` messages carry."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")


def trim(audio: np.ndarray, head: bool = True, tail: bool = True, threshold: float = 0.01,
         keep_s: float = 0.05) -> np.ndarray:
    """Cut a phrase's lead-in (`head`) and its tail of near-silence (`tail`) down to `keep_s`: the
    lead-in delays the first sound heard, and phrases played back to back would gap by both."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    keep = int(keep_s * SAMPLE_RATE)
    return audio[max(0, loud[0] - keep) if head else 0:loud[-1] + keep if tail else len(audio)]


class VoiceModel(ABC):
    """One loaded model with its voices: text -> phrases -> phonemes -> audio at SAMPLE_RATE."""

    sample_rate = SAMPLE_RATE
    frame_s: float  # seconds of audio one decoder frame makes
    context_frames: int  # decoded on each side of a piece and dropped, so the decoder sees past the cut
    max_phonemes: int  # the longest phrase the model takes at once
    name: str  # the model, as `hello` and Content Credentials name it
    device: str
    max_text_chars: int

    @abstractmethod
    def list_voices(self) -> list[str]: ...

    def speaks(self, language: str) -> bool:
        """Whether the model reads text of this espeak language (or "ja")."""
        return True

    @abstractmethod
    def _phonemes(self, text: str, language: str) -> str:
        """Text (already checked) -> the model's phonemes, symbols it lacks dropped."""

    @abstractmethod
    def prepare(self, phonemes: str, voice: str | None = None, speed: float = 1.0) -> Phrase:
        """Phonemes (from `phonemize`, or written by hand) through the model's text half: a phrase
        whose audio `decode` makes, in `voice` (the model's first if None). Every symbol must be in
        the model's vocabulary."""

    @abstractmethod
    def _decode_frames(self, phrase: Phrase, first: int, last: int) -> tuple[np.ndarray, int]:
        """The audio of frames [first, last) at SAMPLE_RATE, and the sample (counted from the phrase's
        start) where it begins, at or after `first`'s."""

    @abstractmethod
    def _sample_at(self, frame: int) -> int:
        """Where `frame` begins, in samples at SAMPLE_RATE from the phrase's start."""

    def _window(self, phrase: Phrase, start: int, end: int) -> tuple[int, int]:
        """Frames decoded for the piece [start, end): context on both sides."""
        return max(0, start - self.context_frames), min(phrase.frames, end + self.context_frames)

    def _check_text(self, text: str, language: str) -> str:
        text = " ".join(text.split())
        if not text:
            raise SpeechError("empty_text", "the text is empty: send at least one word")
        if not self.speaks(language):
            raise SpeechError("unsupported_characters", f"{self.name} does not speak {language}: "
                              "ask for a voice of that language")
        if len(text) > self.max_text_chars:
            raise SpeechError("text_too_long", f"the text has {len(text)} characters; "
                              f"at most {self.max_text_chars} are accepted per request")
        bad = g2p.unsupported_characters(text, language)
        if bad:
            raise SpeechError("unsupported_characters", f"cannot speak {''.join(bad)!r} as {language}; "
                              "remove those characters or transliterate them")
        return text

    def _speaks(self, text: str, language: str) -> bool:
        return sounds(self._phonemes(text, language))

    def phonemize(self, text: str, language: str = "en-us") -> str:
        """Text -> the model's phonemes. Text that says nothing (only punctuation, or symbols
        espeak does not read, such as "^" or "✓") is `empty_text`."""
        phonemes = self._phonemes(self._check_text(text, language), language)
        if not sounds(phonemes):
            raise SpeechError("empty_text", f"{text!r} has nothing to speak")
        return phonemes

    def _check_phonemes(self, phonemes: str, voice: str | None, speed: float, vocabulary) -> str:
        """The voice to say valid phonemes in; else a typed error."""
        voice = voice or self.list_voices()[0]
        if voice not in self.list_voices():
            raise SpeechError("unknown_voice", f"no voice {voice!r}; this model has {', '.join(self.list_voices())}")
        if not 0.5 <= speed <= 2.0:
            raise SpeechError("invalid_speed", f"speed {speed} is outside 0.5 to 2.0")
        if not sounds(phonemes):
            raise SpeechError("empty_text", f"the phonemes {phonemes!r} say nothing")
        unknown = sorted({c for c in phonemes if c not in vocabulary})
        if unknown:
            raise SpeechError("unsupported_characters", f"{''.join(unknown)!r} are not in the model's vocabulary")
        if len(phonemes) > self.max_phonemes:
            raise SpeechError("text_too_long", f"{len(phonemes)} phonemes exceed the model's {self.max_phonemes}: "
                              "split the text with split_phrases first")
        return voice

    def _cuttable(self, text: str, language: str) -> range:
        """Where `text` may be cut into two phrases that each say something: after its first spoken
        word and before its last. A phrase of only ")))" or "..." would decode to silence."""
        words = list(_WORD.finditer(text))
        first = next((w for w in words if self._speaks(w.group(), language)), None)
        if first is None:
            return range(0)
        last = next(w for w in reversed(words) if self._speaks(w.group(), language))
        return range(first.end(), last.start())

    def _fit(self, text: str, language: str) -> list[str]:
        """Split one sentence until each piece fits the context: at the clause end, else the
        space, nearest the middle, never leaving a piece with nothing to say. A sentence that
        cannot be cut so is `text_too_long`."""
        phonemes = self._phonemes(text, language)
        if not sounds(phonemes):  # each word speaks alone, yet espeak reads them together as nothing
            raise SpeechError("empty_text", f"{text!r} has nothing to speak")
        if len(phonemes) <= self.max_phonemes:
            return [text]
        cuttable = self._cuttable(text, language)
        cuts = ([m.start() for m in CLAUSE_END.finditer(text) if m.start() in cuttable]
                or [i for i in cuttable if text[i] == " "])
        if not cuts:
            raise SpeechError("text_too_long", f"{text[:40]!r}... is longer than the model's {self.max_phonemes} "
                              "phonemes and has no space between two spoken words to cut it at")
        cut = min(cuts, key=lambda i: abs(i - len(text) // 2))
        return self._fit(text[:cut].strip(), language) + self._fit(text[cut:].strip(), language)

    def split_phrases(self, text: str, first_max_chars: int = 40, language: str = "en-us") -> list[str]:
        """Phrases to synthesize one at a time, in order, covering the whole text.

        The first is at most `first_max_chars` (unless its first word is longer): cut at the last
        clause end (comma, semicolon, colon, dash) within that length, else at the last space.
        The rest end at sentence ends and newlines; each fits the model's context. Every phrase
        says something: ")))" or "..." stays with the words beside it, never a phrase of its own.
        """
        self._check_text(text, language)
        sentences: list[str] = []
        spoken = False  # by a sentence so far; every sentence but a leading silent one speaks
        for sentence in _SENTENCE_END.split(text.strip()):
            sentence = " ".join(sentence.split())
            if not sentence:
                continue
            speaks = self._speaks(sentence, language)
            if sentences and not (spoken and speaks):  # "..." joins the sentence before; a leading ")" the next
                sentences[-1] += " " + sentence
            else:
                sentences.append(sentence)
            spoken = spoken or speaks
        if not spoken:
            raise SpeechError("empty_text", f"{text!r} has nothing to speak")
        first = sentences[0]
        if len(first) > first_max_chars:
            cuttable = self._cuttable(first, language)
            spaces = [i for i in cuttable if first[i] == " "]
            clauses = [m.start() for m in CLAUSE_END.finditer(first)
                       if m.start() <= first_max_chars and m.start() in cuttable]
            cut = clauses[-1:] or [i for i in spaces if i <= first_max_chars][-1:] or spaces[:1]
            if cut:  # else it is one spoken word, with at most punctuation around it
                sentences[0:1] = [first[:cut[0]].strip(), first[cut[0]:].strip()]
        return [piece for sentence in sentences for piece in self._fit(sentence, language)]

    def decode(self, phrase: Phrase, end: int) -> np.ndarray:
        """The audio of the phrase's next frames, up to `end`, as float32 mono at SAMPLE_RATE.

        Each piece is decoded with context frames on both sides, which are dropped, and meets the
        piece before it in a FADE-sample crossfade. Silence before the first word and after the
        last is trimmed to 50 ms. One piece of all the frames is exactly the model's whole output;
        a phrase already done has no more (an empty array).
        """
        if phrase.done:  # decoding again would repeat the phrase's last context frames
            return np.zeros(0, np.float32)
        start, end = phrase.decoded, min(max(end, phrase.decoded + 1), phrase.frames)
        audio, offset = self._decode_frames(phrase, *self._window(phrase, start, end))
        piece = audio[self._sample_at(start) - offset:self._sample_at(end) - offset + FADE]
        if phrase.held is not None:
            ramp = np.linspace(0.0, 1.0, FADE, dtype=np.float32)
            piece[:FADE] = phrase.held * (1 - ramp) + piece[:FADE] * ramp
        phrase.decoded = end
        if not phrase.done:
            phrase.held, piece = piece[-FADE:].copy(), piece[:-FADE]
        return trim(piece, head=start == 0, tail=phrase.done)

    def synthesize_phonemes(self, phonemes: str, voice: str | None = None, speed: float = 1.0) -> np.ndarray:
        """Phonemes -> float32 mono audio at SAMPLE_RATE, the whole phrase at once."""
        phrase = self.prepare(phonemes, voice, speed)
        return self.decode(phrase, phrase.frames)

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0, language: str = "en-us") -> np.ndarray:
        """One phrase of text -> float32 mono audio at SAMPLE_RATE."""
        return self.synthesize_phonemes(self.phonemize(text, language), voice, speed)

    def warm_up(self, voice: str | None = None, language: str = "en-us") -> bool:
        """Run a short real phrase so the first request finds onnxruntime's sessions and the phonemizer
        loaded; False if there was nothing to run."""
        self.synthesize(WARM_UP_TEXT.get(language, WARM_UP_TEXT["en-us"]), voice, language=language)
        return True
