"""`livegen bench speech`: time to first audio (TTFA) for agent replies, streamed and not, and barge-in.

Typical voice-agent replies (one to three sentences) are spoken over the WebSocket, one after
another, by a client that plays each chunk from a short jitter buffer the way the playground does;
it records TTFA, underruns (a chunk that arrived after the audio before it had finished playing)
and the real-time factor (synthesis time / audio time). TTFA is the time from the text sent to the
first sound a listener hears: the first sample of the first 10 ms louder than SILENCE_DBFS, played
by a player that plays each chunk as soon as it has arrived and the chunk before it has played (no
jitter buffer: that delay is the client's choice). A chunk of lead-in silence counts as waiting.
The time to the first chunk is reported beside it. The baseline is what a non-streaming server
does: synthesize the whole reply, then send it; its TTFA is the whole synthesis time and the
lead-in silence, measured on the same model in this process.

With 1, 4 and 8 sessions speaking at once (each its replies one after another, all starting
together), and beside an image session streaming on the embedded model (the avatar beside the
voice), with the runners taking turns on the CPU (the default) and computing at once: TTFA and
underruns for the voice, frames per second for the picture.

Barge-in: a long reply is interrupted at a random moment, by `cancel` or by a new utterance on the
same session, alone and while three other sessions speak. The audio of the old reply that the client already has is its own to drop (it knows
it interrupted); what the server owes is that little more follows. So the bench reports the old
reply's audio that arrives after the interruption was sent, in milliseconds of audio and as the
wall time of its last sample's arrival; the time until `cancelled` comes back; that no audio of it
arrives after `cancelled`; and when the new reply's first sound is heard.

What the checks cost: the speech policy's moderation per phrase and the audio watermark per chunk
(from each reply's `speech_end` timings), as shares of the synthesis time.

And what streaming costs the voice: each reply's first sentence decoded in two pieces (its first
word or two, then the rest), in pieces at every word end, and split after its first word or two
into two phrases said apart (how the runner streamed before it decoded in pieces), each compared
with the sentence said whole.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.progress import Progress
from scipy.signal import stft

from livegen.bench.report import Series, header, machine_line, save
from livegen.client import AsyncClient
from livegen.config import Settings, SpeechConfig, embedded_model
from livegen.engine.speech_runner import first_piece_end
from livegen.models.voice import to_pcm16
from livegen.protocol import Audio, Cancel, Cancelled, Outcome, SpeechEnd, encode
from livegen.server.background import BackgroundServer

PLAYOUT_DELAY_S = 0.15  # the playground's jitter buffer
SILENCE_DBFS = -40.0  # Kokoro's lead-in sits at -60 to -90 dBFS (10 ms RMS), its first words at -15 to -30
SOUND_WINDOW_S = 0.010
SESSIONS = (1, 4, 8)
BARGE_IN_VOICES = (1, 4)  # the interrupted session alone, and with three others speaking
INTERRUPTION = "Okay, done."  # the new utterance that interrupts, half of the time
INTERRUPT_WITHIN = 0.8  # of the time a reply takes to synthesize: the rest is the shared CPU's jitter
WAIT_S = 120.0  # for any one message in the barge-in trials: a hang fails the bench instead of stalling it
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
QUICK_REPLIES = [REPLIES[4]]  # what a quick run's many sessions say: its shortest
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


def sound_onset(pcm: np.ndarray, sample_rate: int) -> int | None:
    """The first sample of the first SOUND_WINDOW_S window louder than SILENCE_DBFS (RMS); None if silent."""
    window = round(sample_rate * SOUND_WINDOW_S)
    windows = len(pcm) // window
    frames = pcm[:windows * window].astype(np.float64).reshape(windows, window) / 32768
    loud = np.sqrt(np.mean(frames ** 2, axis=1)) > 10 ** (SILENCE_DBFS / 20)
    return int(np.argmax(loud)) * window if loud.any() else None


def played_at(arrivals: list[tuple[float, int]], sample: int, sample_rate: int) -> float:
    """When a player that plays each chunk once it has arrived and the one before it has played plays
    `sample` (an index into the chunks joined): (arrival s, samples) per chunk."""
    clock, begin = float("-inf"), 0
    for arrived, count in arrivals:
        clock = max(clock, arrived)
        if sample < begin + count:
            return clock + (sample - begin) / sample_rate
        clock += count / sample_rate
        begin += count
    raise ValueError(f"sample {sample} is past the {begin} samples that arrived")


def first_sound_s(arrivals: list[tuple[float, int]], pcm: bytes, sample_rate: int) -> float:
    onset = sound_onset(np.frombuffer(pcm, "<i2"), sample_rate)
    if onset is None:
        raise RuntimeError(f"{len(pcm) // 2} samples of audio and no sound in them")
    return played_at(arrivals, onset, sample_rate)


async def stream(client: AsyncClient, text: str) -> dict:
    arrivals: list[tuple[float, int]] = []  # (s after the text was sent, samples)
    started = time.perf_counter()

    def heard(chunk: Audio) -> None:
        arrivals.append((time.perf_counter() - started, len(chunk.pcm) // 2))

    speech = await client.say(text, on_audio=heard)
    rate, timings = speech.sample_rate, speech.end.timings
    audio_s = sum(n for _, n in arrivals) / rate
    return {"ttfa_ms": first_sound_s(arrivals, speech.pcm, rate) * 1000, "first_chunk_ms": arrivals[0][0] * 1000,
            "underruns": playback([(at, n / rate) for at, n in arrivals]), "audio_s": audio_s,
            "rtf": timings["synth_ms"] / 1000 / audio_s, "chunks": speech.end.chunks,
            "synth_ms": timings["synth_ms"], "moderation_ms": timings["moderation_ms"],
            "watermark_ms": timings["watermark_ms"]}


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    """n, p50, p95 (picked as Series picks them) and the max: for shares, audio and barge-in figures."""
    ordered = sorted(values)
    return {"n": len(ordered), "p50": round(statistics.median(ordered), digits),
            "p95": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], digits),
            "max": round(ordered[-1], digits)}


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


def whole_reply(model, text: str, voice: str) -> float:
    """The non-streaming baseline: every phrase of the reply synthesized before anything is sent, then
    played until its first sound (ms)."""
    started = time.perf_counter()
    audio = np.concatenate([model.synthesize(sentence, voice)
                            for sentence in model.split_phrases(text, first_max_chars=len(text))])
    synthesized = time.perf_counter() - started
    pcm = to_pcm16(audio)  # as the runner sends it
    return (synthesized + (sound_onset(pcm, model.sample_rate) or 0) / model.sample_rate) * 1000


async def painting(url: str, stop: asyncio.Event) -> Series:
    """One image session in a closed loop: the next frame is asked for as the last one arrives."""
    frames = Series("image frames beside the voice")
    async with AsyncClient(url) as client:
        while not stop.is_set():
            started = time.perf_counter()
            await client.generate(IMAGE_PROMPT, seed=len(frames.ms))
            frames.ms.append((time.perf_counter() - started) * 1000)
    return frames


async def replies(url: str, sessions: int, texts: list[str], each: int, progress: Progress, label: str,
                  with_images: bool = False) -> dict:
    """`sessions` clients speaking at once, all starting together, each `each` replies one after another
    (session k starts at texts[k]); with an image session streaming beside them if asked."""
    task = progress.add_task(label, total=sessions * each)
    stop = asyncio.Event()
    painter = asyncio.create_task(painting(url, stop)) if with_images else None

    async def speaker(k: int) -> list[dict]:
        rows = []
        async with AsyncClient(url) as client:
            for i in range(each):
                text = texts[(k + i) % len(texts)]
                rows.append({"session": k, "text": text, **await stream(client, text)})
                progress.advance(task)
        return rows

    started = time.perf_counter()
    rows = [row for rows in await asyncio.gather(*(speaker(k) for k in range(sessions))) for row in rows]
    seconds = time.perf_counter() - started
    stop.set()
    result = {"sessions": sessions, "replies": len(rows),
              "ttfa": Series("TTFA, first sound", [r["ttfa_ms"] for r in rows]).summary(),
              "first_chunk": Series("TTFA, first chunk", [r["first_chunk_ms"] for r in rows]).summary(),
              "underruns": sum(r["underruns"] for r in rows),
              "replies_with_underruns": sum(1 for r in rows if r["underruns"]),
              "rtf_median": round(statistics.median(r["rtf"] for r in rows), 3), "rows": rows}
    if painter is not None:
        frames = await painter
        result |= {"frames": frames.summary(), "frames_per_s": round(len(frames.ms) / seconds, 1)}
    return result


class Listener:
    """Every outcome of one client, stamped as it arrives, read by a task of its own: the barge-in trials
    send while audio keeps arriving, and an arrival must not wait for the trial to read it."""

    def __init__(self, client: AsyncClient):
        self.client = client
        self.heard: list[tuple[float, Outcome]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                outcome = await self.client.receive()
                self.heard.append((time.perf_counter(), outcome))
                self._arrived.set()
        finally:
            self._arrived.set()  # a waiter sees the error

    async def until(self, wanted: Callable[[Outcome], bool]) -> float:
        """When the first outcome that is `wanted` arrived, waiting for it if need be."""
        while True:
            if (at := next((at for at, outcome in self.heard if wanted(outcome)), None)) is not None:
                return at
            if self._reader.done():
                self._reader.result()  # its error
                raise RuntimeError("the client stopped reading")
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), WAIT_S)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def ended(id: str, *types: type) -> Callable[[Outcome], bool]:
    return lambda outcome: outcome.id == id and isinstance(outcome, types)


async def barge_ins(url: str, trials: int, progress: Progress, others: int = 0, seed: int = 0,
                    within: float = INTERRUPT_WITHIN) -> dict:
    """Interrupt the three-sentence reply `trials` times, by `cancel` in even trials and by a new utterance
    (INTERRUPTION) in odd ones, while `others` sessions speak their replies one after another. Each
    interruption comes at a moment drawn in the first `within` of the time between the reply's first
    chunk and its end when said once uninterrupted: while the server is still synthesizing it (a fast
    voice sends a reply long before it has played, and an interruption after that finds nothing left to
    stop). `within` 0: on the first chunk, which a quick run uses so that each trial finds the reply
    still being said however busy the machine."""
    task = progress.add_task(f"barge-in, {others + 1} voices at once", total=trials)
    rng = random.Random(seed)
    marks = []

    async def talking(k: int) -> None:
        async with AsyncClient(url) as client:
            for n in itertools.count(k):
                await client.say(REPLIES[n % len(REPLIES)])

    background = [asyncio.create_task(talking(k)) for k in range(others)]
    async with AsyncClient(url) as client:
        listener = Listener(client)
        try:
            await client.speak(THREE_SENTENCES, id="whole")
            began = await listener.until(lambda outcome: outcome.id == "whole")
            window = await listener.until(ended("whole", SpeechEnd)) - began
            for n in range(trials):
                old, new = f"reply {n}", f"interruption {n}" if n % 2 else None
                await client.speak(THREE_SENTENCES, id=old)
                await listener.until(lambda outcome: outcome.id == old)
                await asyncio.sleep(rng.uniform(0, within * window))
                sent = time.perf_counter()
                if new is None:
                    await client.send_raw(encode(Cancel(id=old), client.codec))
                else:
                    await client.speak(INTERRUPTION, id=new)
                await listener.until(ended(old, Cancelled, SpeechEnd))
                if new is not None:
                    await listener.until(ended(new, SpeechEnd))
                marks.append((old, new, sent))
                progress.advance(task)
            # Any late audio of an interrupted reply would arrive before this one has ended.
            await client.speak(INTERRUPTION, id="last")
            await listener.until(ended("last", SpeechEnd))
        finally:
            await listener.close()
            for talker in background:  # its client closes mid-reply: the server stops that utterance
                talker.cancel()
            for ended_with in await asyncio.gather(*background, return_exceptions=True):
                if isinstance(ended_with, Exception):  # not the cancel: a voice that failed
                    raise ended_with
    return barge_in_summary([interruption(listener.heard, old, new, sent) for old, new, sent in marks], window)


def interruption(heard: list[tuple[float, Outcome]], old: str, new: str | None, sent: float) -> dict:
    """What one interruption (sent at `sent`) left of the old reply, and when the new one was first heard."""
    chunks = [(at, outcome) for at, outcome in heard if outcome.id == old and isinstance(outcome, Audio)]
    rate = chunks[0][1].sample_rate
    end_at, end = next((at, outcome) for at, outcome in heard if outcome.id == old and not isinstance(outcome, Audio))
    late = [(at, len(chunk.pcm) // 2) for at, chunk in chunks if at > sent]
    before = [(at - sent, len(chunk.pcm) // 2) for at, chunk in chunks if at <= sent]
    # The client's own buffer at the interruption: received and not yet played (by a player without a jitter
    # buffer), which is when the last sample received finishes playing.
    buffered = played_at(before, sum(n for _, n in before) - 1, rate) + 1 / rate
    row = {"by": "new utterance" if new else "cancel", "cancelled": isinstance(end, Cancelled),
           "late_chunks": len(late), "late_audio_ms": sum(n for _, n in late) / rate * 1000,
           "last_late_sample_ms": (max(at for at, _ in late) - sent) * 1000 if late else 0.0,
           "cancelled_ms": (end_at - sent) * 1000, "buffered_ms": max(0.0, buffered) * 1000,
           "audio_after_cancelled": sum(1 for at, _ in chunks if at > end_at)}
    if new is not None:
        arrivals = [(at - sent, len(o.pcm) // 2) for at, o in heard if o.id == new and isinstance(o, Audio)]
        pcm = b"".join(o.pcm for _, o in heard if o.id == new and isinstance(o, Audio))
        row["new_reply_ttfa_ms"] = first_sound_s(arrivals, pcm, rate) * 1000
    return row


def barge_in_summary(rows: list[dict], window_s: float) -> dict:
    stopped = [r for r in rows if r["cancelled"]]  # not those that ended before the interruption reached them
    answered = [r for r in stopped if "new_reply_ttfa_ms" in r]

    def figures(key: str, among: list[dict]) -> dict | None:
        return spread([r[key] for r in among]) if among else None

    return {"trials": len(rows), "window_s": round(window_s, 2), "cancelled": len(stopped),
            "late_audio": figures("late_audio_ms", stopped),
            "late_chunks_max": max((r["late_chunks"] for r in stopped), default=0),
            "last_late_sample": figures("last_late_sample_ms", stopped),
            "cancelled_answer": figures("cancelled_ms", stopped),
            "buffered": figures("buffered_ms", stopped),
            "audio_after_cancelled": sum(r["audio_after_cancelled"] for r in rows),
            "new_reply_ttfa": figures("new_reply_ttfa_ms", answered), "rows": rows}


def checks(rows: list[dict], phrases: Callable[[str], int]) -> dict:
    """Moderation per phrase and the watermark per chunk, and both as shares of each reply's synthesis
    time (the worker's synth_ms less the moderation inside it), from the replies new to the server."""
    def share(row: dict, cost_ms: float) -> float:
        return 100 * cost_ms / (row["synth_ms"] - row["moderation_ms"])

    return {"moderation_per_reply": Series("speech policy checks per new reply",
                                           [r["moderation_ms"] for r in rows]).summary(),
            "moderation_per_phrase_ms": spread([r["moderation_ms"] / phrases(r["text"]) for r in rows], 2),
            "moderation_share_pct": spread([share(r, r["moderation_ms"]) for r in rows], 2),
            "watermark_per_chunk_ms": spread([r["watermark_ms"] / r["chunks"] for r in rows], 3),
            "watermark_share_pct": spread([share(r, r["watermark_ms"]) for r in rows], 2),
            "together_share_pct": spread([share(r, r["moderation_ms"] + r["watermark_ms"]) for r in rows], 2)}


def speech_server(models: list, cpu_turns: bool = True) -> BackgroundServer:
    return BackgroundServer(Settings(models=models, speech=SpeechConfig(), cpu_turns=cpu_turns))


def run(rounds: int, output: Path, quick: bool = False) -> dict:
    beside = REPLIES[:2] if quick else REPLIES  # a quick run (CI's smoke test) only checks it works
    together = QUICK_REPLIES if quick else REPLIES
    with Progress() as progress:
        server = speech_server([])
        try:
            url = server.ws_url
            alone = asyncio.run(replies(url, 1, REPLIES, rounds * len(REPLIES), progress, "replies"))
            many = {str(n): asyncio.run(replies(url, n, together, rounds, progress, f"{n} sessions at once"))
                    for n in SESSIONS[1:]}
            barge_in = {str(n): asyncio.run(barge_ins(url, 2 if quick else 4 * rounds, progress, others=n - 1,
                                                      within=0 if quick else INTERRUPT_WITHIN))
                        for n in (BARGE_IN_VOICES[:1] if quick else BARGE_IN_VOICES)}
            runner = server.engine.speech
            model = f"voice {runner.default_voice} (models {runner.info().name})"
            baseline = Series("whole reply, then send", [whole_reply(runner.model, THREE_SENTENCES,
                                                                     runner.default_voice)
                                                         for _ in range(max(1, rounds))])
            voice = fidelity(runner.model, runner.default_voice)

            def phrases(text: str) -> int:
                return len(runner.model.split_phrases(text, first_max_chars=len(text)))

            # The first round's replies are new to the server; later rounds find their verdicts cached.
            costs = checks(alone["rows"][:len(REPLIES)], phrases)
        finally:
            server.stop()
        beside_images = {}
        for key, turns in (("turns", True), ("at_once", False)):
            server = speech_server([embedded_model()], cpu_turns=turns)
            try:
                beside_images[key] = asyncio.run(replies(server.ws_url, 1, beside, rounds * len(beside), progress,
                                                         f"replies beside images, cpu_turns={turns}", True))
            finally:
                server.stop()
    rows = alone["rows"]
    three = Series("TTFA, three sentences", [r["ttfa_ms"] for r in rows if r["text"] == THREE_SENTENCES])
    results = {**header("speech"), "model": model, "replies": len(REPLIES), "rounds": rounds, "playout_delay_s": PLAYOUT_DELAY_S,
               "silence_dbfs": SILENCE_DBFS, "ttfa": alone["ttfa"], "first_chunk": alone["first_chunk"],
               "three_sentences": three.summary(), "whole_reply": baseline.summary(),
               "three_sentence_speedup": round(statistics.median(baseline.ms) / statistics.median(three.ms), 2),
               "underruns": alone["underruns"], "rtf_median": alone["rtf_median"], "rows": rows,
               "sessions": {"1": {k: v for k, v in alone.items() if k != "rows"}, **many},
               "barge_in": barge_in, "checks": costs,
               "beside_images": beside_images, "fidelity": voice}
    save(results, markdown(results), output)
    return results


def cells(figures: dict | None) -> str:
    """p50 | p95 | max table cells, in ms; dashes if nothing was measured."""
    if figures is None:
        return "- | - | -"
    return f"{figures['p50']} ms | {figures['p95']} ms | {figures['max']} ms"


def markdown(r: dict) -> str:
    c = r["checks"]
    return "\n".join([
        f"Speech {r['model']}, {r['replies']} agent replies x {r['rounds']}; "
        f"{machine_line(r['machine'])}. TTFA: text sent to its first sound played (the first 10 ms above "
        f"{r['silence_dbfs']:.0f} dBFS, each chunk played as soon as it has arrived).", "",
        "| measure | p50 | p95 |", "|---|---|---|",
        f"| time to first audio, streamed (all replies) | {r['ttfa']['p50_ms']} ms | {r['ttfa']['p95_ms']} ms |",
        f"| time to the first chunk, streamed (all replies) | {r['first_chunk']['p50_ms']} ms | "
        f"{r['first_chunk']['p95_ms']} ms |",
        f"| time to first audio, streamed (three sentences) | {r['three_sentences']['p50_ms']} ms | "
        f"{r['three_sentences']['p95_ms']} ms |",
        f"| time to first audio, whole reply first (three sentences) | {r['whole_reply']['p50_ms']} ms | "
        f"{r['whole_reply']['p95_ms']} ms |", "",
        f"- streaming speed-up on the three-sentence reply: **{r['three_sentence_speedup']}x**",
        f"- underruns with a {r['playout_delay_s'] * 1000:.0f} ms jitter buffer: **{r['underruns']}**",
        f"- real-time factor (synthesis / audio), median: {r['rtf_median']}",
        f"- reply moderation (the speech policy checked phrase by phrase before synthesis, inside the TTFA "
        f"above), per reply new to the server (the first round), all its phrases: p50 "
        f"{c['moderation_per_reply']['p50_ms']} ms, p95 {c['moderation_per_reply']['p95_ms']} ms; per phrase p50 "
        f"{c['moderation_per_phrase_ms']['p50']} ms; {c['moderation_share_pct']['p50']}% of the synthesis time "
        f"(p95 {c['moderation_share_pct']['p95']}%)",
        f"- the audio watermark (every chunk marked as it leaves, outside the synthesis time), per chunk: p50 "
        f"{c['watermark_per_chunk_ms']['p50']} ms, p95 {c['watermark_per_chunk_ms']['p95']} ms; "
        f"{c['watermark_share_pct']['p50']}% of the synthesis time (p95 {c['watermark_share_pct']['p95']}%); "
        f"moderation and watermark together {c['together_share_pct']['p50']}% (p95 "
        f"{c['together_share_pct']['p95']}%)",
        f"- each reply's first sentence against itself said whole (log-spectral similarity along the best "
        f"alignment, 1 = the same sound; median of {r['fidelity']['sentences']}): its first word or two, then "
        f"the rest **{r['fidelity']['first_piece_then_rest']}**; in pieces at every word end "
        f"{r['fidelity']['pieces_at_word_ends']}; split after a word or two into two phrases said apart "
        f"{r['fidelity']['two_phrases']}", "",
        "Sessions speaking at once (each its replies one after another, all starting together):", "",
        "| sessions | replies | TTFA p50 / p95 | first chunk p50 / p95 | underruns (replies with any) | "
        "real-time factor |", "|---|---|---|---|---|---|",
        *(f"| {s['sessions']} | {s['replies']} | {s['ttfa']['p50_ms']} / {s['ttfa']['p95_ms']} ms | "
          f"{s['first_chunk']['p50_ms']} / {s['first_chunk']['p95_ms']} ms | {s['underruns']} "
          f"({s['replies_with_underruns']}) | {s['rtf_median']} |" for s in r["sessions"].values()), "",
        "Barge-in: the three-sentence reply interrupted by `cancel` and by a new utterance in turn, at a moment "
        f"drawn in the first {INTERRUPT_WITHIN:.0%} of its synthesis (the window: how long after its first chunk "
        "it ended when said once uninterrupted); replies that had ended before the interruption reached them "
        "are left out:", "",
        "| measure | voices at once (window; trials stopped) | p50 | p95 | max |", "|---|---|---|---|---|",
        *(f"| {label} | {n} ({b['window_s']} s; {b['cancelled']} of {b['trials']}) | {cells(b[key])} |"
          for label, key in (("old audio arriving after the interruption was sent", "late_audio"),
                             ("its last sample's arrival, after the interruption", "last_late_sample"),
                             ("`cancelled` answered, after the interruption", "cancelled_answer"),
                             ("old audio in the client's buffer at the interruption (its own to drop)", "buffered"),
                             ("the new reply's first sound, after the interruption", "new_reply_ttfa"))
          for n, b in r["barge_in"].items()), "",
        "- audio of an interrupted reply arriving after its `cancelled`: **"
        f"{sum(b['audio_after_cancelled'] for b in r['barge_in'].values())}**; old audio arriving after the "
        "interruption, most chunks in one trial: "
        f"{max(b['late_chunks_max'] for b in r['barge_in'].values())}", "",
        f"Beside an image session streaming on the embedded model ({IMAGE_PROMPT!r}, each frame asked for as "
        "the last arrives):", "",
        "| runners on the CPU | TTFA p50 / p95 | underruns | image frames/s | frame p50 / p95 |", "|---|---|---|---|---|",
        *(f"| {'take turns (default)' if key == 'turns' else 'compute at once'} | {arm['ttfa']['p50_ms']} / "
          f"{arm['ttfa']['p95_ms']} ms | {arm['underruns']} | {arm['frames_per_s']} | {arm['frames']['p50_ms']} / "
          f"{arm['frames']['p95_ms']} ms |" for key, arm in r["beside_images"].items()), ""])
