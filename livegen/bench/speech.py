"""`livegen bench speech`: time to first audio (TTFA) for agent replies, streamed and not.

Typical voice-agent replies (one to three sentences) are spoken over the WebSocket, one after
another, by a client that plays each chunk from a short jitter buffer the way the playground does;
it records TTFA (text sent to first chunk received), underruns (a chunk that arrived after the
audio before it had finished playing) and the real-time factor (synthesis time / audio time).
The baseline is what a non-streaming server does: synthesize the whole reply, then send it; its
TTFA is the whole synthesis time, measured on the same model in this process.

Then the same replies while an image session streams beside them on the embedded model (the
avatar beside the voice), with the runners taking turns on the CPU (the default) and computing
at once: TTFA and underruns for the voice, frames per second for the picture.

And what streaming costs the voice: each reply's first sentence decoded in two pieces (its first
word or two, then the rest), in pieces at every word end, and split after its first word or two
into two phrases said apart (how the runner streamed before it decoded in pieces), each compared
with the sentence said whole.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress
from scipy.signal import stft

from livegen.bench.report import Series, header, machine_line, save
from livegen.client import AsyncClient
from livegen.config import Settings, SpeechConfig, embedded_model
from livegen.engine.speech_runner import first_piece_end
from livegen.protocol import Audio
from livegen.server.background import BackgroundServer

PLAYOUT_DELAY_S = 0.15  # the playground's jitter buffer
REPLIES = [
    "Sure, I can help with that.",
    "Your table for two is booked for seven thirty tonight. You will get a confirmation by text.",
    "Hmm, let me check. The next train leaves at ten past nine from platform four. "
    "It takes about forty minutes, and there is a later one at ten.",
    "Good question. The short answer is yes, but it depends on your plan. "
    "Premium includes it, while basic does not. Would you like me to compare them?",
    "Okay, done.",
    "I found three flights. The cheapest one stops in Frankfurt and arrives at noon. "
    "The direct one costs a little more but lands two hours earlier.",
]
THREE_SENTENCES = REPLIES[2]
IMAGE_PROMPT = "a smiling face"


def playback(arrivals: list[tuple[float, float]]) -> int:
    """Underruns of a player that starts PLAYOUT_DELAY_S after the first chunk: (arrival s, duration s)."""
    underruns, clock = 0, arrivals[0][0] + PLAYOUT_DELAY_S
    for arrived, duration in arrivals:
        if arrived > clock:  # the audio before it has run out: a gap
            underruns += 1
            clock = arrived + PLAYOUT_DELAY_S
        clock += duration
    return underruns


async def stream(url: str, text: str) -> dict:
    arrivals: list[tuple[float, float]] = []
    async with AsyncClient(url) as client:
        started = time.perf_counter()

        def heard(chunk: Audio) -> None:
            arrivals.append((time.perf_counter() - started, len(chunk.pcm) / 2 / chunk.sample_rate))

        speech = await client.say(text, on_audio=heard)
    audio_s = sum(d for _, d in arrivals)
    return {"ttfa_ms": arrivals[0][0] * 1000, "underruns": playback(arrivals), "audio_s": audio_s,
            "rtf": speech.end.timings["synth_ms"] / 1000 / audio_s,
            "moderation_ms": speech.end.timings["moderation_ms"]}


def similarity(reference: np.ndarray, audio: np.ndarray) -> float:
    """Mean cosine similarity of the two log spectra (10 ms frames, mean removed) along their best
    time alignment (dynamic time warping): 1 is the same sound; saying it apart lowers it."""
    def spectra(x: np.ndarray) -> np.ndarray:
        frames = np.log(np.abs(stft(x, nperseg=512, noverlap=272)[2][:200]).T + 1e-3)
        frames -= frames.mean(axis=1, keepdims=True)
        return frames / (np.linalg.norm(frames, axis=1, keepdims=True) + 1e-9)  # a silent frame: all zeros

    cost = 1 - spectra(reference) @ spectra(audio).T
    total = np.full((cost.shape[0] + 1, cost.shape[1] + 1), np.inf)
    steps = np.zeros(total.shape)
    total[0, 0] = 0
    for i in range(1, total.shape[0]):
        for j in range(1, total.shape[1]):
            prev = min(((i - 1, j - 1), (i - 1, j), (i, j - 1)), key=lambda ij: total[ij])
            total[i, j], steps[i, j] = cost[i - 1, j - 1] + total[prev], steps[prev] + 1
    return float(1 - total[-1, -1] / steps[-1, -1])


def fidelity(model, voice: str) -> dict:
    """Each reply's first sentence said whole, against: decoded as the runner cuts it when it has
    audio in hand (its first word or two, then the rest); decoded in pieces at every word end (the
    most joins it can make); and split after a word or two into two phrases said apart."""
    scores: dict[str, list[float]] = {"first_piece_then_rest": [], "pieces_at_word_ends": [], "two_phrases": []}
    for reply in REPLIES:
        sentence = model.split_phrases(reply, first_max_chars=len(reply))[0]
        phonemes = model.phonemize(sentence)
        whole = model.synthesize_phonemes(phonemes, voice)
        phrase = model.prepare(phonemes, voice)
        first = first_piece_end(phrase)
        if first == phrase.frames:  # one word: nothing to cut
            continue
        scores["first_piece_then_rest"].append(
            similarity(whole, np.concatenate([model.decode(phrase, first), model.decode(phrase, phrase.frames)])))
        phrase = model.prepare(phonemes, voice)
        scores["pieces_at_word_ends"].append(
            similarity(whole, np.concatenate([model.decode(phrase, end) for end in phrase.word_ends])))
        head, *rest = model.split_phrases(sentence, first_max_chars=10)
        apart = [model.synthesize(head, voice), *([model.synthesize(" ".join(rest), voice)] if rest else [])]
        scores["two_phrases"].append(similarity(whole, np.concatenate(apart)))
    return {**{key: round(statistics.median(values), 3) for key, values in scores.items()},
            "sentences": len(scores["two_phrases"])}


def whole_reply_ms(model, text: str, voice: str) -> float:
    """The non-streaming baseline: every phrase of the reply synthesized before anything is sent."""
    started = time.perf_counter()
    for sentence in model.split_phrases(text, first_max_chars=len(text)):
        model.synthesize(sentence, voice)
    return (time.perf_counter() - started) * 1000


async def painting(url: str, stop: asyncio.Event) -> Series:
    """One image session in a closed loop: the next frame is asked for as the last one arrives."""
    frames = Series("image frames beside the voice")
    async with AsyncClient(url) as client:
        while not stop.is_set():
            started = time.perf_counter()
            await client.generate(IMAGE_PROMPT, seed=len(frames.ms))
            frames.ms.append((time.perf_counter() - started) * 1000)
    return frames


async def replies(url: str, texts: list[str], rounds: int, progress: Progress, label: str,
                  with_images: bool) -> dict:
    task = progress.add_task(label, total=rounds * len(texts))
    stop = asyncio.Event()
    painter = asyncio.create_task(painting(url, stop)) if with_images else None
    started, rows = time.perf_counter(), []
    for _ in range(rounds):
        for text in texts:
            rows.append({"text": text, **await stream(url, text)})
            progress.advance(task)
    seconds = time.perf_counter() - started
    stop.set()
    result = {"ttfa": Series("streamed TTFA", [r["ttfa_ms"] for r in rows]).summary(),
              "underruns": sum(r["underruns"] for r in rows), "rows": rows}
    if painter is not None:
        frames = await painter
        result |= {"frames": frames.summary(), "frames_per_s": round(len(frames.ms) / seconds, 1)}
    return result


def speech_server(models: list, cpu_turns: bool = True) -> BackgroundServer:
    return BackgroundServer(Settings(models=models, speech=SpeechConfig(), cpu_turns=cpu_turns))


def run(rounds: int, output: Path, quick: bool = False) -> dict:
    beside = REPLIES[:2] if quick else REPLIES  # a quick run (CI's smoke test) only checks it works
    with Progress() as progress:
        server = speech_server([])
        try:
            alone = asyncio.run(replies(server.ws_url, REPLIES, rounds, progress, "replies", with_images=False))
            runner = server.engine.speech
            baseline = Series("whole reply, then send", [whole_reply_ms(runner.model, THREE_SENTENCES,
                                                                         runner.default_voice)
                                                          for _ in range(max(1, rounds))])
            voice = fidelity(runner.model, runner.default_voice)
        finally:
            server.stop()
        beside_images = {}
        for key, turns in (("turns", True), ("at_once", False)):
            server = speech_server([embedded_model()], cpu_turns=turns)
            try:
                beside_images[key] = asyncio.run(replies(server.ws_url, beside, rounds, progress,
                                                         f"replies beside images, cpu_turns={turns}", True))
            finally:
                server.stop()
    rows = alone["rows"]
    three = Series("streamed TTFA, three sentences", [r["ttfa_ms"] for r in rows if r["text"] == THREE_SENTENCES])
    results = {**header("speech"), "replies": len(REPLIES), "rounds": rounds, "playout_delay_s": PLAYOUT_DELAY_S,
               "ttfa": alone["ttfa"], "three_sentences": three.summary(), "whole_reply": baseline.summary(),
               "three_sentence_speedup": round(statistics.median(baseline.ms) / statistics.median(three.ms), 2),
               "underruns": alone["underruns"],
               "rtf_median": round(statistics.median(r["rtf"] for r in rows), 3),
               # The first round's replies are new to the server; later rounds find their verdicts cached.
               "moderation": Series("speech policy checks per new reply",
                                    [r["moderation_ms"] for r in rows[:len(REPLIES)]]).summary(),
               "rows": rows,
               "beside_images": beside_images, "fidelity": voice}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    return "\n".join([
        f"Kokoro-82M int8 (onnxruntime, CPU), {r['replies']} agent replies x {r['rounds']}; "
        f"{machine_line(r['machine'])}.", "",
        "| measure | p50 | p95 |", "|---|---|---|",
        f"| time to first audio, streamed (all replies) | {r['ttfa']['p50_ms']} ms | {r['ttfa']['p95_ms']} ms |",
        f"| time to first audio, streamed (three sentences) | {r['three_sentences']['p50_ms']} ms | "
        f"{r['three_sentences']['p95_ms']} ms |",
        f"| time to first audio, whole reply first (three sentences) | {r['whole_reply']['p50_ms']} ms | "
        f"{r['whole_reply']['p95_ms']} ms |", "",
        f"- streaming speed-up on the three-sentence reply: **{r['three_sentence_speedup']}x**",
        f"- underruns with a {r['playout_delay_s'] * 1000:.0f} ms jitter buffer: **{r['underruns']}**",
        f"- real-time factor (synthesis / audio), median: {r['rtf_median']}",
        f"- reply moderation (the speech policy checked phrase by phrase before synthesis, inside the TTFA "
        f"above), per reply new to the server (the first round), all its phrases: p50 "
        f"{r['moderation']['p50_ms']} ms, p95 {r['moderation']['p95_ms']} ms",
        f"- each reply's first sentence against itself said whole (log-spectral similarity along the best "
        f"alignment, 1 = the same sound; median of {r['fidelity']['sentences']}): its first word or two, then "
        f"the rest **{r['fidelity']['first_piece_then_rest']}**; in pieces at every word end "
        f"{r['fidelity']['pieces_at_word_ends']}; split after a word or two into two phrases said apart "
        f"{r['fidelity']['two_phrases']}", "",
        f"Beside an image session streaming on the embedded model ({IMAGE_PROMPT!r}, each frame asked for as "
        "the last arrives):", "",
        "| runners on the CPU | TTFA p50 / p95 | underruns | image frames/s | frame p50 / p95 |", "|---|---|---|---|---|",
        *(f"| {'take turns (default)' if key == 'turns' else 'compute at once'} | {b['ttfa']['p50_ms']} / "
          f"{b['ttfa']['p95_ms']} ms | {b['underruns']} | {b['frames_per_s']} | {b['frames']['p50_ms']} / "
          f"{b['frames']['p95_ms']} ms |" for key, b in r["beside_images"].items()), ""])
