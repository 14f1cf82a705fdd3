"""The speech runner: one warm speech model, streaming each session's utterance piece by piece.

Text arrives in pieces (`speak` messages with one id, the last marked final). It is cut into
phrases, whole sentences, so each keeps the prosody the model gives a sentence; a sentence still
arriving is cut at its first clause, so that synthesis starts before the text has all arrived.
One worker thread, taking the sessions in turn, runs a phrase through the model's text half and
then decodes its audio a piece at a time, each piece sent at once as small PCM chunks: the
utterance's first piece is its first word or two, so audio starts early; each later piece is as
long as can be decoded, with a margin, while the audio already sent plays (at least half a
second, at a word end where one fits), so playback does not run dry once it has started.
A new utterance or a `cancel` stops the current one: it is answered `cancelled` on the event
loop, and a piece still being decoded for it is dropped when it comes back, so no audio of it
follows.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from livegen.config import Settings, SpeechConfig
from livegen.engine.metrics import EngineMetrics
from livegen.engine.runner import Runner
from livegen.engine.session import Session
from livegen.models.base import ModelError
from livegen.models.speech import CLAUSE_END, CONTEXT_FRAMES, Phrase, SpeechError
from livegen.protocol import Audio, Cancel, Cancelled, Error, ProtocolError, Speak, SpeechEnd, SpeechInfo

log = logging.getLogger(__name__)

CLAUSE_CHARS = 40  # a sentence still arriving is cut at its first clause, if it ends this soon, else here
SCRAP_CHARS = 10  # a clause leaving no more of its sentence than this waits for the sentence
FIRST_PIECE_FRAMES = 8  # the first piece: the first word ending at least this far (200 ms) into the speech
MIN_PIECE_FRAMES = 20  # later pieces, even when less fits the audio ahead: smaller ones cost more than they play
BUDGET_MARGIN = 1.25  # audio kept in hand beyond the predicted decoding time (a shared CPU varies)
CLAUSE_TAIL = re.compile(r"\s*[,;:—–]+$")
SENTENCE_DONE = re.compile(r"[.!?…]\s+$|\n\s*$")
CHUNK_MS = 100  # PCM per `audio` message: small enough to start playback early, large enough to be cheap


def first_piece_end(phrase: Phrase) -> int:
    """An utterance's first piece ends at the first word ending FIRST_PIECE_FRAMES into the speech:
    the listener waits for it."""
    return next((end for end in phrase.word_ends if end > phrase.decoded and end >= phrase.lead + FIRST_PIECE_FRAMES),
                phrase.frames)


@dataclass(eq=False)
class Utterance:
    id: str
    session: Session
    voice: str
    speed: float
    received_at: float
    text: str = ""  # received, not yet cut into phrases
    phrase: Phrase | None = None  # the phrase being decoded, piece by piece
    chars: int = 0  # received in all
    final: bool = False
    seq: int = 0
    samples: int = 0
    synth_ms: float = 0.0
    first_audio_at: float | None = None
    synthesizing: bool = False  # a piece of it is with the worker thread
    stopped: bool = False

    @property
    def done(self) -> bool:
        return self.final and not self.text.strip() and self.phrase is None

    def audio_ahead_s(self, sample_rate: int) -> float:
        """Audio sent and not yet played, if the client plays it as it arrives."""
        if self.first_audio_at is None:
            return 0.0
        return self.samples / sample_rate - (time.perf_counter() - self.first_audio_at)


class SpeechRunner(Runner):
    kind = "speech"

    def __init__(self, config: SpeechConfig, settings: Settings, metrics: EngineMetrics):
        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.name = "speech"
        self.model = None
        self.piece_s = 0.0  # decoding cost: per piece
        self.frame_s = 0.0  # and per frame decoded, context included, measured at warm-up
        self.voices: list[str] = []
        self.default_voice = ""
        self._ready = False
        self._current: dict[Session, Utterance] = {}
        self._queue: deque[Utterance] = deque()  # utterances with pieces to decode, in turn
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-speech")
        self._loop_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def on_cpu(self) -> bool:
        return self.model is not None and self.model.device == "cpu"

    def info(self) -> SpeechInfo | None:
        if self.model is None:
            return None
        return SpeechInfo(name=self.config.model or "kokoro-82m-int8", sample_rate=self.model.sample_rate,
                          voices=self.voices, default_voice=self.default_voice,
                          max_text_chars=self.config.max_text_chars)

    async def start(self) -> None:
        from livegen.models.speech import SpeechModel

        def load() -> None:
            started = time.perf_counter()
            self.model = SpeechModel(self.config.model, self.config.voices, max_text_chars=self.config.max_text_chars)
            self.voices = self.model.list_voices()
            self.default_voice = self.config.default_voice or self.voices[0]
            if self.default_voice not in self.voices:
                raise ModelError(f"default voice {self.default_voice!r} is not among {self.voices}")
            self.model.warm_up(self.default_voice)
            self._measure_speed()
            log.info("speech model warm in %.1fs", time.perf_counter() - started)

        await asyncio.get_running_loop().run_in_executor(self._executor, load)
        self._ready = True
        self._loop_task = asyncio.create_task(self._serve(), name="runner-speech")

    def _measure_speed(self) -> None:
        """Decoding cost of a piece: a fixed cost plus a cost per frame, context frames included (warm)."""
        phonemes = self.model.phonemize("This sentence measures how fast the model speaks on this machine.",
                                        self.config.language)

        def timed(frames: int) -> float:
            phrase = self.model.prepare(phonemes, self.default_voice)
            started = time.perf_counter()
            self.model.decode(phrase, frames)  # frames [0, frames) and CONTEXT_FRAMES after them
            return time.perf_counter() - started

        short, long = 10, 60
        short_s = min(timed(short) for _ in range(2))
        self.frame_s = max(0.0, min(timed(long) for _ in range(2)) - short_s) / (long - short)
        self.piece_s = max(0.0, short_s - self.frame_s * (short + CONTEXT_FRAMES))
        log.info("speech decoding: %.0f ms a piece + %.1f ms a frame", self.piece_s * 1000, self.frame_s * 1000)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wake(self, session: Session) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ inputs (event loop)

    def speak(self, session: Session, request: Speak) -> None:
        """Start an utterance (stopping the session's current one) or add a piece to it."""
        utterance = self._current.get(session)
        new = utterance is None or utterance.id != request.id
        if new:
            voice = request.voice or self.default_voice
            if voice not in self.voices:
                raise ProtocolError("unknown_voice", f"unknown voice {voice!r}; voices: {', '.join(self.voices)}",
                                    request.id)
            fresh = Utterance(request.id, session, voice, request.speed, time.perf_counter())
        elif utterance.final:
            raise ProtocolError("invalid", f"utterance {request.id!r} already had its final piece", request.id)
        target = fresh if new else utterance
        text = target.text + request.text
        total = target.chars + len(request.text)
        if total > self.config.max_text_chars:
            raise ProtocolError("text_too_long", f"the utterance has {total} characters; "
                                f"at most {self.config.max_text_chars}", request.id)
        if request.final and not text.strip() and not target.seq:
            raise ProtocolError("empty_text", "nothing to say: the text is empty", request.id)
        if text.strip():
            self._split(text, self.config.max_text_chars, request.id)  # refuses what cannot be spoken, now
        if new:  # valid: it replaces the session's current utterance (barge-in)
            if utterance is not None:
                self._stop(utterance, by=request.id)
            self._current[session] = target
        target.text, target.final, target.chars = text, request.final, total
        if not (target.synthesizing or target in self._queue):  # else the runner looks again after it
            self._schedule(target)

    def cancel(self, session: Session, request: Cancel) -> None:
        utterance = self._current.get(session)
        if utterance is None or utterance.id != request.id:
            raise ProtocolError("unknown_utterance", f"no utterance {request.id!r} is playing", request.id)
        self._stop(utterance, by=None)

    def close_session(self, session: Session) -> None:
        utterance = self._current.pop(session, None)
        if utterance is not None:
            utterance.stopped = True

    def _stop(self, utterance: Utterance, by: str | None) -> None:
        utterance.stopped = True
        self._current.pop(utterance.session, None)
        self.metrics.speech_cancelled.inc()
        utterance.session.emit(Cancelled(id=utterance.id, by=by))

    def _split(self, text: str, first_max_chars: int, request_id: str | None = None) -> list[str]:
        try:
            return self.model.split_phrases(text, first_max_chars=first_max_chars, language=self.config.language)
        except SpeechError as exc:
            raise ProtocolError(exc.code, str(exc), request_id) from exc

    def _next_phrase(self, utterance: Utterance) -> str | None:
        """Cut the next phrase if it is complete: a whole sentence, or the first clause (or a few
        words) of a sentence whose end has not arrived yet."""
        for cut in (self.config.max_text_chars, self._clause_limit(utterance.text)):
            head, *rest = self._split(utterance.text, cut)
            # The last phrase may still grow, unless the text is final or ends a sentence.
            if rest or utterance.final or SENTENCE_DONE.search(utterance.text):
                tail = " ".join(rest)
                utterance.text = tail + (" " if tail and utterance.text[-1:].isspace() else "")
                # A comma's pause would be decoded only to be trimmed.
                return CLAUSE_TAIL.sub("", head) or head
        return None

    def _clause_limit(self, text: str) -> int:
        """The first clause, if it ends within CLAUSE_CHARS, else that many characters; but all of its
        sentence when that leaves a scrap ("Okay, | done."), which would cost a phrase of its own."""
        sentence, *_ = self._split(text, self.config.max_text_chars)
        clause = CLAUSE_END.search(sentence)
        limit = clause.start() if clause and clause.start() <= CLAUSE_CHARS else CLAUSE_CHARS
        head, *_ = self._split(text, limit)
        return len(sentence) if len(sentence) - len(head) <= SCRAP_CHARS else limit

    def _piece_end(self, utterance: Utterance, phrase: Phrase) -> int:
        """Where the phrase's next piece ends: the utterance's first piece at `first_piece_end`; later
        pieces at the last word end that can be decoded, with a margin, while the audio ahead of the
        listener plays, but at least MIN_PIECE_FRAMES on (smaller pieces would only fall further
        behind); inside a word when no word ends that soon."""
        if utterance.first_audio_at is None:
            return first_piece_end(phrase)
        ends = [end for end in phrase.word_ends if end > phrase.decoded]
        budget = utterance.audio_ahead_s(self.model.sample_rate) / BUDGET_MARGIN - self.piece_s
        frames = int(budget / self.frame_s) - 2 * CONTEXT_FRAMES if self.frame_s else phrase.frames
        frames = max(frames, MIN_PIECE_FRAMES)
        fits = [end for end in ends if end - phrase.decoded <= frames]
        return fits[-1] if fits else phrase.decoded + frames

    def _decode_next(self, utterance: Utterance, text: str | None) -> np.ndarray:
        """(worker thread) Start the phrase `text` if given, and decode the next piece of it."""
        if text is not None:
            phonemes = self.model.phonemize(text, self.config.language)
            utterance.phrase = self.model.prepare(phonemes, utterance.voice, utterance.speed)
        phrase = utterance.phrase
        audio = self.model.decode(phrase, self._piece_end(utterance, phrase))
        if phrase.done:
            utterance.phrase = None
        return audio

    def _schedule(self, utterance: Utterance) -> None:
        """Queue it for the worker if a piece of it is ready to decode; finish it if nothing is left."""
        if utterance.done:
            self._finish(utterance)
        elif utterance.phrase is not None or self._next_phrase_ready(utterance):
            self._queue.append(utterance)
            self._wake.set()

    def _next_phrase_ready(self, utterance: Utterance) -> bool:
        """A complete phrase is waiting (the same test as `_next_phrase` at its shortest cut)."""
        return bool(utterance.text.strip()) and (
            utterance.final or bool(SENTENCE_DONE.search(utterance.text))
            or len(self._split(utterance.text, self._clause_limit(utterance.text))) > 1)

    # ------------------------------------------------------------------ synthesis (worker thread)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            utterance = self._queue.popleft()
            if utterance.stopped:
                continue
            utterance.synthesizing = True
            try:
                text = None if utterance.phrase is not None else self._next_phrase(utterance)
                if utterance.phrase is None and text is None:  # no complete phrase after all: wait for more text
                    continue
                async with self.turn():
                    started = time.perf_counter()
                    audio = await loop.run_in_executor(self._executor, self._decode_next, utterance, text)
            except Exception as exc:  # one bad phrase must not stop the runner
                log.exception("speech synthesis failed")
                utterance.stopped = True
                self._current.pop(utterance.session, None)
                self.metrics.errors.labels("internal").inc()
                utterance.session.emit(Error(id=utterance.id, code="internal", message=f"synthesis failed: {exc}"))
                continue
            finally:
                utterance.synthesizing = False
            if utterance.stopped:  # cancelled while this piece was decoded: drop it
                continue
            utterance.synth_ms += (time.perf_counter() - started) * 1000
            self._send(utterance, audio)
            self._schedule(utterance)  # its next phrase, after the other sessions' turns

    def _send(self, utterance: Utterance, audio: np.ndarray) -> None:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
        step = self.model.sample_rate * CHUNK_MS // 1000
        if utterance.first_audio_at is None and len(pcm):
            utterance.first_audio_at = time.perf_counter()
            self.metrics.speech_ttfa.observe(utterance.first_audio_at - utterance.received_at)
        for begin in range(0, len(pcm), step):
            utterance.session.emit(Audio(id=utterance.id, seq=utterance.seq, sample_rate=self.model.sample_rate,
                                         pcm=pcm[begin:begin + step].tobytes()))
            utterance.seq += 1
        utterance.samples += len(pcm)
        self.metrics.speech_seconds.inc(len(pcm) / self.model.sample_rate)

    def _finish(self, utterance: Utterance) -> None:
        self._current.pop(utterance.session, None)
        now = time.perf_counter()
        ttfa = (utterance.first_audio_at or now) - utterance.received_at
        utterance.session.emit(SpeechEnd(
            id=utterance.id, chunks=utterance.seq, samples=utterance.samples, sample_rate=self.model.sample_rate,
            timings={"ttfa_ms": round(ttfa * 1000, 3), "synth_ms": round(utterance.synth_ms, 3),
                     "total_ms": round((now - utterance.received_at) * 1000, 3)}))
