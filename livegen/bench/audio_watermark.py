"""`livegen bench audio-watermark`: what the speech watermark costs, how loud it is, what it survives.

Replies are spoken by the server's own voice through a real server on loopback, twice: once with
the watermark on, whose `speech_end` timings give its cost inside the stream beside the synthesis
and the reply moderation it shares a budget with (together at most 10% of the synthesis time);
once with it off (the runner's watermarker set aside), for unmarked hosts. The hosts are then
marked here as the runner marks them (100 ms chunks, an utterance counter each; chunk by chunk is
the same samples as the whole reply, which the tests check), so that each mark can be compared
with the speech under it:

- cost: each 100 ms chunk's marking timed alone, and an utterance's set-up;
- audibility: segmental SNR of the mark against the speech (20 ms frames with speech in them);
- robustness: the payload read back after resampling to 16 kHz, MP3 and Opus at 64 kbit/s
  (libsndfile), from the whole reply and from cuts of 1, 1.5, 2 and 3 s at random points;
- false positives: random unmarked cuts of the same voice, speech-like synthetic audio, noise.

With `--perth VENV`, Resemble AI's Perth (`resemble-perth`, its neural watermarker's weights
inside the package) is measured on the same hosts in its own virtual environment (perth_worker.py,
made in VENV if missing): its cost per 100 ms chunk and per reply, its segmental SNR marking each
reply whole and chunk by chunk, and its detection score after the same transforms.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from livegen.bench.report import Series, header, machine_line, save
from livegen.client import AsyncClient
from livegen.config import Settings, SpeechConfig
from livegen.safety import audio_watermark as aw
from livegen.server.background import BackgroundServer

CHUNK_MS = 100  # the runner's audio message
REPLIES = [
    "Your table for two is booked for seven thirty tonight. You will get a confirmation by text "
    "about an hour before, and you can reply to change the time.",
    "The next train leaves at ten past nine from platform four. It takes about forty minutes, "
    "and there is a later one at ten if that suits you better.",
    "Good question. The short answer is yes, but it depends on your plan. Premium includes it, "
    "while basic does not. Would you like me to compare the two for you?",
    "I found three flights. The cheapest one stops in Frankfurt and arrives at noon. The direct "
    "one costs a little more but lands two hours earlier.",
    "To reset your password, open the settings page, choose security, and press the reset button. "
    "We will send a link to the address on your account.",
    "Thanks for waiting. Your order shipped this morning and should arrive on Thursday. I have "
    "sent the tracking number to your phone.",
]
SHORT_REPLIES = ["Okay, done.", "Sure, one moment.", "Yes, that works for me.", "Thanks, talk soon."]
CUTS_S = (1.0, 1.5, 2.0, 3.0)
CUTS_PER_REPLY = 8
NULL_SEGMENTS = 1000  # of each kind
NULL_SECONDS = 2.0
PERTH_THRESHOLD = 0.5  # its score is a probability-like value in [0, 1]
PERTH_CUTS = 2  # 2 s cuts per reply and transform: Perth reads about 2.5x slower than real time here


def run(output: Path, quick: bool = False, perth: Path | None = None) -> dict:
    # A quick run (the tests') only checks that it works: two replies of each kind, fewer reads.
    replies, short = (REPLIES[:2], SHORT_REPLIES[:2]) if quick else (REPLIES, SHORT_REPLIES)
    cuts, null_segments = (2, 100) if quick else (CUTS_PER_REPLY, NULL_SEGMENTS)
    rng = np.random.default_rng(0)
    with Progress() as progress:
        task = progress.add_task("replies, marked then unmarked", total=2 * (len(replies) + len(short)))
        server = BackgroundServer(Settings(models=[], speech=SpeechConfig()))
        try:
            streamed = asyncio.run(_say(server.ws_url, replies + short, progress, task))
            runner = server.engine.speech
            marker, runner.watermarker = runner.watermarker, None
            try:
                plain = asyncio.run(_say(server.ws_url, replies + short, progress, task))
            finally:
                runner.watermarker = marker
            rate, server_id = runner.model.sample_rate, server.engine.settings.safety.server_id
        finally:
            server.stop()
        hosts = [audio for audio, _ in plain]
        watermarker = aw.AudioWatermarker(server_id, rate)
        marks, marked, chunk_ms, setup_ms = [], [], [], []
        for counter, host in enumerate(hosts):
            started = time.perf_counter()
            mark = watermarker.utterance(counter)
            setup_ms.append((time.perf_counter() - started) * 1000)
            pieces = []
            for begin in range(0, len(host), rate * CHUNK_MS // 1000):
                started = time.perf_counter()
                pieces.append(mark.mark(host[begin:begin + rate * CHUNK_MS // 1000]))
                chunk_ms.append((time.perf_counter() - started) * 1000)
            marks.append(mark)
            marked.append(np.concatenate(pieces))
        long = len(replies)
        task = progress.add_task("robustness and false positives", total=len(aw.ATTACKS) + 3)
        robustness = {}
        for name in aw.ATTACKS:
            robustness[name] = _robustness(marked[:long], marks[:long], rate, name, cuts, rng)
            progress.advance(task)
        short_replies = {name: _short(marked[long:], marks[long:], rate, name) for name in aw.ATTACKS}
        nulls = _false_positives(hosts[:long], rate, null_segments, rng, progress, task)
        peer = _perth(perth, hosts[:long], rate, streamed[:long], rng, progress) if perth else None
    timings = [end for _, end in streamed]
    stream = {
        "replies": len(timings),
        "audio_s": round(sum(len(audio) for audio, _ in streamed) / rate, 2),
        "watermark_ms_per_reply": Series("watermark per reply", [t["watermark_ms"] for t in timings]).summary(),
        "watermark_ms_per_chunk": Series("watermark per chunk", [t["watermark_ms"] / t["chunks"]
                                                                 for t in timings]).summary(),
        "moderation_ms_per_reply": Series("moderation per reply", [t["moderation_ms"] for t in timings]).summary(),
        "synthesis_ms_per_reply": Series("synthesis per reply", [_synthesis(t) for t in timings]).summary(),
        "share_of_synthesis": _share(timings),
        "marked_in_stream": sum(aw.read(audio, rate).payload is not None for audio, _ in streamed),
    }
    results = {**header("audio-watermark"), "quick": quick, "sample_rate": rate, "scheme": _scheme(),
               "stream": stream,
               "chunk_ms": Series("mark a 100 ms chunk", chunk_ms).summary(),
               "utterance_setup_ms": Series("an utterance's mark", setup_ms).summary(),
               "segmental_snr_db": _spread([aw.segmental_snr(h, m, rate) for h, m in zip(hosts, marked)]),
               "cuts_per_reply": cuts, "robustness": robustness, "short_replies": short_replies,
               "false_positives": nulls, "perth": peer}
    save(results, markdown(results), output)
    return results


async def _say(url: str, texts: list[str], progress: Progress, task) -> list[tuple[np.ndarray, dict]]:
    """Each text spoken in a session of its own: (its audio as float, its speech_end timings with chunks)."""
    spoken = []
    for text in texts:
        async with AsyncClient(url) as client:
            speech = await client.say(text)
        audio = np.frombuffer(speech.pcm, dtype="<i2").astype(np.float32) / 32768
        spoken.append((audio, {**speech.end.timings, "chunks": speech.end.chunks}))
        progress.advance(task)
    return spoken


def _synthesis(timings: dict) -> float:
    """The reply's synthesis alone: synth_ms counts the worker's whole turn, moderation inside it."""
    return timings["synth_ms"] - timings["moderation_ms"]


def _share(timings: list[dict]) -> dict:
    """Watermark and reply moderation over synthesis, all replies together and the worst reply."""
    def share(t: dict) -> float:
        return (t["watermark_ms"] + t["moderation_ms"]) / _synthesis(t)

    total = sum(t["watermark_ms"] + t["moderation_ms"] for t in timings) / sum(_synthesis(t) for t in timings)
    return {"all_replies": round(total, 4), "worst_reply": round(max(share(t) for t in timings), 4),
            "watermark_alone": round(sum(t["watermark_ms"] for t in timings) / sum(_synthesis(t) for t in timings), 5)}


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def _robustness(marked: list[np.ndarray], marks: list[aw.UtteranceMark], rate: int, attack: str, cuts: int,
                rng: np.random.Generator) -> dict:
    """Payloads read back (and bits right before the CRC's help) from whole replies and random cuts."""
    rows = {}
    for seconds in (*CUTS_S, "whole"):
        read = wrong = 0
        bits = []
        for audio, mark in zip(marked, marks):
            changed, changed_rate = aw.attack(audio, rate, attack)
            if seconds == "whole":
                segments = [changed]
            else:
                length = int(seconds * changed_rate)
                segments = [changed[start:start + length]
                            for start in rng.integers(0, len(changed) - length, cuts)]
            for reading in (aw.read(segment, changed_rate) for segment in segments):
                read += reading.payload == mark.payload
                wrong += reading.payload is not None and reading.payload != mark.payload
                bits.append(np.mean(np.equal(reading.bits, mark.payload.bits())))
        count = len(bits)
        rows[str(seconds)] = {"reads": count, "payload_rate": round(read / count, 4), "wrong_payloads": wrong,
                              "bit_accuracy": round(float(np.mean(bits)), 4)}
    return rows


def _short(marked: list[np.ndarray], marks: list[aw.UtteranceMark], rate: int, attack: str) -> dict:
    """Short replies read whole: the ones a voice agent says most."""
    read = [aw.read(*aw.attack(audio, rate, attack)).payload == mark.payload for audio, mark in zip(marked, marks)]
    return {"reads": len(read), "payload_rate": round(sum(read) / len(read), 4),
            "seconds": [round(len(audio) / rate, 2) for audio in marked]}


def _false_positives(hosts: list[np.ndarray], rate: int, segments: int, rng: np.random.Generator,
                     progress: Progress, task) -> dict:
    """`segments` unmarked segments of each kind, NULL_SECONDS long, read in batches of 100."""
    length = int(NULL_SECONDS * rate)
    voice = np.concatenate(hosts)
    kinds = {
        "same voice, unmarked, random cuts": lambda n: np.stack(
            [voice[start:start + length] for start in rng.integers(0, len(voice) - length, n)]),
        "speech-like synthetic": lambda n: speech_like(n, length, rate, rng),
        "noise (white, pink)": lambda n: noise(n, length, rng),
    }
    rows = {}
    for kind, make in kinds.items():
        readings = [reading for _ in range(segments // 100) for reading in aw.read_batch(make(100), rate)]
        scores = np.array([r.score for r in readings])
        rows[kind] = {"segments": len(readings), "present": sum(r.present for r in readings),
                      "payloads": sum(r.payload is not None for r in readings),
                      "max_score": round(float(scores.max()), 2),
                      "p99_score": round(float(np.percentile(scores, 99)), 2)}
        progress.advance(task)
    return rows


def _scheme() -> dict:
    return {"name": aw.SCHEME, "band_hz": list(aw.BAND), "period_s": float(aw.PERIOD_S), "repeats": aw.REPEATS,
            "strength": aw.STRENGTH, "pilot_share": aw.PILOT_SHARE, "detect_score": aw.DETECT_SCORE,
            "flip_bits": aw.FLIP_BITS}


# --- Perth, in its own virtual environment ---------------------------------------------------------

# torch 2.13.0 is the CPU build livegen's Makefile installs from local disk. torchaudio's newest
# release is 2.11, built for CUDA: its compiled extension needs CUDA's libraries, so it is removed
# after install (torchaudio loads without it; the spectrogram transforms Perth uses are torch code).
# resemble-perth imports pkg_resources, gone from setuptools 81.
PERTH_REQUIREMENTS = ("torch==2.13.0", "librosa", "pyyaml", "setuptools<81")
PERTH_NO_DEPS = ("resemble-perth==1.0.1", "torchaudio==2.11.1")
PERTH_WORKER = Path(__file__).with_name("perth_worker.py")
PERTH_MARKER = ".livegen-perth"


def ensure_perth_venv(venv: Path) -> Path:
    """Create `venv` with Perth and what it imports, unless a complete one is already there."""
    python = venv / "bin" / "python"
    marker = venv / PERTH_MARKER
    wanted = "\n".join(PERTH_REQUIREMENTS + PERTH_NO_DEPS)
    if marker.is_file() and marker.read_text() == wanted and python.exists():
        return python
    print(f"perth: creating {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *PERTH_REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-deps", *PERTH_NO_DEPS], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    for library in (Path(site) / "torchaudio" / "lib").glob("*.so"):
        library.unlink()
    subprocess.run([str(python), "-W", "ignore", "-c", "import perth; assert perth.PerthImplicitWatermarker"],
                   check=True)
    marker.write_text(wanted)
    return python


def _perth(venv: Path, hosts: list[np.ndarray], rate: int, streamed: list[tuple[np.ndarray, dict]],
           rng: np.random.Generator, progress: Progress) -> dict:
    python = ensure_perth_venv(venv)
    task = progress.add_task("Perth: embed, then detect", total=2)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        np.savez(work / "hosts.npz", rate=rate, **{f"host{i}": host for i, host in enumerate(hosts)})
        _worker(python, "embed", work / "hosts.npz", work / "marked.npz")
        marked = np.load(work / "marked.npz")
        timings = json.loads(str(marked["timings"]))
        progress.advance(task)
        whole = [marked[f"whole{i}"] for i in range(len(hosts))]
        chunked = [marked[f"chunked{i}"] for i in range(len(hosts))]
        reads: dict[str, tuple[np.ndarray, int]] = {}
        for i, (host, audio) in enumerate(zip(hosts, whole)):
            reads[f"chunked~whole~{i}"] = (chunked[i], rate)
            for attack, (changed, changed_rate) in [("unmarked", (host, rate)),
                                                    *((name, aw.attack(audio, rate, name)) for name in aw.ATTACKS)]:
                reads[f"{attack}~whole~{i}"] = (changed, changed_rate)
                length = int(2 * changed_rate)
                for j, start in enumerate(rng.integers(0, len(changed) - length, PERTH_CUTS)):
                    reads[f"{attack}~2.0~{i}-{j}"] = (changed[start:start + length], changed_rate)
        arrays = {name: audio for name, (audio, _) in reads.items()}
        arrays |= {f"{name}.rate": np.array(r) for name, (_, r) in reads.items()}
        np.savez(work / "reads.npz", **arrays)
        _worker(python, "detect", work / "reads.npz", work / "scores.json")
        scores = json.loads((work / "scores.json").read_text())
        progress.advance(task)
    groups: dict[str, list[float]] = {}
    for name, score in scores.items():
        attack, seconds, _ = name.split("~")
        groups.setdefault(f"{attack} {seconds}", []).append(score)
    audio_s = sum(timings["seconds"])
    synthesis_ms_per_s = sum(_synthesis(t) for _, t in streamed) / (sum(len(a) for a, _ in streamed) / rate)
    return {
        "load_s": round(timings["load_s"], 2),
        "chunk_ms": Series("Perth, a 100 ms chunk", timings["chunk_ms"]).summary(),
        "ms_per_audio_s_whole": round(sum(timings["whole_ms"]) / audio_s, 1),
        "ms_per_audio_s_chunked": round(sum(timings["chunk_ms"]) / audio_s, 1),
        "synthesis_ms_per_audio_s": round(synthesis_ms_per_s, 1),
        "segmental_snr_db": {"whole": _spread([aw.segmental_snr(h, m, rate) for h, m in zip(hosts, whole)]),
                             "chunked": _spread([aw.segmental_snr(h, m, rate) for h, m in zip(hosts, chunked)])},
        "detected": {group: {"reads": len(values), "min": round(min(values), 3), "max": round(max(values), 3),
                             "rate": round(float(np.mean(np.array(values) >= PERTH_THRESHOLD)), 4)}
                     for group, values in sorted(groups.items())},
        "payload_bits": 0,
    }


def _worker(python: Path, command: str, source: Path, target: Path) -> None:
    subprocess.run([str(python), "-W", "ignore", str(PERTH_WORKER), command, str(source), str(target)], check=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True)


def markdown(r: dict) -> str:
    s, rob = r["stream"], r["robustness"]
    lengths = [*map(str, CUTS_S), "whole"]
    lines = [
        f"livegen's speech watermark ({r['scheme']['name']}: {r['scheme']['band_hz'][0]:.0f}-"
        f"{r['scheme']['band_hz'][1]:.0f} Hz, period {r['scheme']['period_s']} s, 48-bit payload x "
        f"{r['scheme']['repeats']}), on the server's default voice at {r['sample_rate']} Hz; "
        f"{machine_line(r['machine'])}.", "",
        f"In the stream ({s['replies']} replies, {s['audio_s']} s of audio, each spoken once; synthesis is the "
        "worker's time less the reply moderation inside it):", "",
        "| per reply | p50 | p95 |", "|---|---|---|",
        f"| watermark (every chunk, and the utterance's set-up) | {s['watermark_ms_per_reply']['p50_ms']} ms | "
        f"{s['watermark_ms_per_reply']['p95_ms']} ms |",
        f"| watermark per 100 ms chunk | {s['watermark_ms_per_chunk']['p50_ms']} ms | "
        f"{s['watermark_ms_per_chunk']['p95_ms']} ms |",
        f"| reply moderation | {s['moderation_ms_per_reply']['p50_ms']} ms | "
        f"{s['moderation_ms_per_reply']['p95_ms']} ms |",
        f"| synthesis | {s['synthesis_ms_per_reply']['p50_ms']} ms | {s['synthesis_ms_per_reply']['p95_ms']} ms |",
        "",
        f"- watermark and moderation together: **{s['share_of_synthesis']['all_replies'] * 100:.2f}%** of the "
        f"synthesis time over all replies (target at most 10%), {s['share_of_synthesis']['worst_reply'] * 100:.2f}% "
        f"in the worst reply; the watermark alone {s['share_of_synthesis']['watermark_alone'] * 100:.3f}%",
        f"- marking one 100 ms chunk alone: p50 {r['chunk_ms']['p50_ms']} ms, p95 {r['chunk_ms']['p95_ms']} ms; "
        f"an utterance's set-up (its period, built once): p50 {r['utterance_setup_ms']['p50_ms']} ms",
        f"- replies whose streamed audio reads back with its payload: {s['marked_in_stream']} of {s['replies']}",
        f"- audibility, segmental SNR of the mark (20 ms frames with speech): median "
        f"**{r['segmental_snr_db']['median']} dB** (min {r['segmental_snr_db']['min']}, max "
        f"{r['segmental_snr_db']['max']})", "",
        f"Payload read back (server tag and utterance counter, CRC-checked), from {r['cuts_per_reply']} cuts per reply "
        "at random points and from the whole reply:", "",
        "| transform | " + " | ".join(f"{x} s" if x != "whole" else "whole reply" for x in lengths) + " |",
        "|---" * (len(lengths) + 1) + "|",
        *(f"| {name} | " + " | ".join(f"{rob[name][x]['payload_rate'] * 100:.1f}%" for x in lengths) + " |"
          for name in rob), "",
        "- bits right before the CRC's help, 1 s cuts: "
        + ", ".join(f"{name} {rob[name]['1.0']['bit_accuracy'] * 100:.1f}%" for name in rob)
        + "; wrong payloads (read, but not the one embedded) in all these reads: "
        + str(sum(rob[name][x]["wrong_payloads"] for name in rob for x in lengths)),
        "- short replies read whole ("
        + ", ".join(f"{x} s" for x in r["short_replies"]["none"]["seconds"]) + "): "
        + ", ".join(f"{name} {v['payload_rate'] * 100:.0f}%" for name, v in r["short_replies"].items()), "",
        f"False positives: unmarked {NULL_SECONDS} s segments (a mark is present at a pilot score of "
        f"{r['scheme']['detect_score']}):", "",
        "| segments | count | marks found | payloads read | highest score | p99 score |", "|---|---|---|---|---|---|",
        *(f"| {kind} | {v['segments']} | {v['present']} | {v['payloads']} | {v['max_score']} | {v['p99_score']} |"
          for kind, v in r["false_positives"].items()), ""]
    if r["perth"]:
        p = r["perth"]
        lines += [
            "Resemble AI's Perth (resemble-perth 1.0.1, PerthImplicitWatermarker, torch CPU, 2 threads) on the "
            "same unmarked replies:", "",
            "| measure | Perth | livegen |", "|---|---|---|",
            f"| payload | none: one present/absent score | 48 bits (server tag, utterance counter, CRC) |",
            f"| a 100 ms chunk, p50 | {p['chunk_ms']['p50_ms']} ms | {r['chunk_ms']['p50_ms']} ms |",
            f"| per second of audio, chunk by chunk | {p['ms_per_audio_s_chunked']} ms | "
            f"{round(r['chunk_ms']['p50_ms'] * 1000 / CHUNK_MS, 2)} ms |",
            f"| per second of audio, whole replies | {p['ms_per_audio_s_whole']} ms | - |",
            f"| the voice's synthesis, per second of audio | {p['synthesis_ms_per_audio_s']} ms | "
            f"{p['synthesis_ms_per_audio_s']} ms |",
            f"| segmental SNR, whole / chunk by chunk | {p['segmental_snr_db']['whole']['median']} / "
            f"{p['segmental_snr_db']['chunked']['median']} dB | {r['segmental_snr_db']['median']} dB (the same) |",
            f"| load | {p['load_s']} s | - |", "",
            f"Perth's detection (score at least {PERTH_THRESHOLD}), whole replies and 2 s cuts:", "",
            "| read | detected | score min / max |", "|---|---|---|",
            *(f"| {group} | {v['rate'] * 100:.0f}% of {v['reads']} | {v['min']} / {v['max']} |"
              for group, v in p["detected"].items()), ""]
    return "\n".join(lines)


# --- synthetic audio ------------------------------------------------------------------------------


def speech_like(count: int, samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """(count, samples) float32 audio shaped like speech: a glottal pulse train with a wandering pitch
    (90-240 Hz) mixed with breath noise, through three random formants and a spectral tilt, gated
    into syllables and pauses at 2-5 per second, each row at its own level."""
    t = np.arange(samples) / rate
    pitch = rng.uniform(90, 240, (count, 1)) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5, (count, 1)) * t))
    pulses = np.cos(2 * np.pi * np.cumsum(pitch / rate, axis=1)).clip(0, None) ** 8
    voicing = np.sin(2 * np.pi * rng.uniform(1, 3, (count, 1)) * t + rng.uniform(0, 6, (count, 1))) > -0.3
    source = np.where(voicing, pulses - pulses.mean(axis=1, keepdims=True), 0.3 * rng.standard_normal((count, samples)))
    frequencies = np.fft.rfftfreq(samples, 1 / rate)
    shape = np.zeros((count, len(frequencies)))
    for low, high in ((300, 900), (900, 2500), (2300, 3500)):  # formants: centre and bandwidth per row
        centre, width = rng.uniform(low, high, (count, 1)), rng.uniform(60, 200, (count, 1))
        shape += 1 / (1 + ((frequencies - centre) / width) ** 2)
    shape *= 1 / np.sqrt(1 + frequencies / 500)  # the voice's fall-off towards high frequencies
    audio = np.fft.irfft(np.fft.rfft(source, axis=1) * shape, samples, axis=1)
    syllables = np.sin(2 * np.pi * rng.uniform(2, 5, (count, 1)) * t + rng.uniform(0, 6, (count, 1))).clip(0, None)
    audio *= syllables**0.7
    level = rng.uniform(0.03, 0.15, (count, 1)) / np.maximum(np.sqrt(np.mean(audio**2, axis=1, keepdims=True)), 1e-9)
    return (audio * level).astype(np.float32)


def noise(count: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(count, samples) float32: white noise in even rows, pink (1/f) in odd ones, at varied levels."""
    white = rng.standard_normal((count, samples))
    spectrum = np.fft.rfft(white[1::2], axis=1)
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.shape[1]), 1))
    white[1::2] = np.fft.irfft(spectrum, samples, axis=1)
    white /= white.std(axis=1, keepdims=True)
    return (white * rng.uniform(0.005, 0.2, (count, 1))).astype(np.float32)
