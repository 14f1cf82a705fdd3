"""The speech runner: warm voices, streaming each session's utterance piece by piece.

Text arrives in pieces (`speak` messages with one id, the last marked final). It is cut into
phrases, whole sentences, so each keeps the prosody the model gives a sentence; a sentence still
arriving is cut at its first clause, so that synthesis starts before the text has all arrived.
One worker thread, taking the sessions in turn, runs a phrase through the model's text half and
then decodes its audio a piece at a time, each piece sent at once as small PCM chunks: the
utterance's first piece is its first word or two, so audio starts early; each later piece is as
long as can be decoded, with a margin, while the audio already sent plays (at least half a
second, at a word end where one fits), so playback does not run dry once it has started.
An utterance is said in the voice asked for, else in the default voice of its first piece's
language (`Voices`: English, or Japanese for text with kana); the runner treats every voice's
model alike, timing each model's decoding at warm-up.
A new utterance or a `cancel` stops the current one: it is answered `cancelled` on the event
loop, and a piece still being decoded for it is dropped when it comes back, so no audio of it
follows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from livegen import cache
from livegen.config import Settings, SpeechConfig
from livegen.engine.metrics import EngineMetrics
from livegen.engine.runner import DEADLINE_WARM_MULTIPLE, MIN_DEADLINE_S, ComputeTimeout, Runner, timeout_error
from livegen.engine.task import Owner, Slot, Task
from livegen.engine.workers import Workers
from livegen.models import LIBRARY_LOADS
from livegen.models.voice import CLAUSE_END, Phrase, SpeechError, VoiceModel, to_pcm16
from livegen.models.voices import Voices
from livegen.protocol import (Audio, Blocked, Cancel, Cancelled, Error, Outcome, ProtocolError, Speak, SpeechEnd,
                              SpeechInfo)
from livegen.safety.moderation import SPEECH_POLICY, Moderator, Policy, Verdict, minilm_embedder

if TYPE_CHECKING:
    from livegen.safety.audio_watermark import AudioWatermarker, UtteranceMark

log = logging.getLogger(__name__)

CLAUSE_CHARS = 40  # a sentence still arriving is cut at its first clause, if it ends this soon, else here
SCRAP_CHARS = 10  # a clause leaving no more of its sentence than this waits for the sentence
FIRST_PIECE_S = 0.2  # the first piece: the first word ending at least this far into the speech
MIN_PIECE_S = 0.5  # later pieces, even when less fits the audio ahead: smaller ones cost more than they play
BUDGET_MARGIN = 1.25  # audio kept in hand beyond the predicted decoding time (a shared CPU varies)
CLAUSE_TAIL = re.compile(r"\s*[,;:—–]+$")
SENTENCE_DONE = re.compile(r"[.!?…]\s+$|\n\s*$")
SECONDS_PER_CHAR = 0.1  # of speech: far more than any voice takes, for a deadline's bound
CHUNK_MS = 100  # PCM per `audio` message: small enough to start playback early, large enough to be cheap


def first_piece_end(phrase: Phrase) -> int:
    """An utterance's first piece ends at the first word ending FIRST_PIECE_S into the speech:
    the listener waits for it."""
    least = phrase.lead + FIRST_PIECE_S / phrase.frame_s
    return next((end for end in phrase.word_ends if end > phrase.decoded and end >= least), phrase.frames)


@dataclass(frozen=True)
class DecodingSpeed:
    """What decoding a piece costs one model on this machine: a fixed cost and a cost per frame decoded."""

    piece_s: float
    frame_s: float
    slowest_s: float  # the longest piece timed (MEASURED_PIECE_S of audio): what the hang deadline grows from


SPEEDS = "speech-speeds.json"  # in the cache folder, by machine and model
MEASURED_PIECE_S = 1.5


def kept_speeds() -> dict[str, DecodingSpeed]:
    try:
        return {key: DecodingSpeed(**value) for key, value in json.loads(cache.read(SPEEDS) or b"{}").items()}
    except (ValueError, TypeError, AttributeError):  # unreadable, or not a mapping of speeds: measure again
        return {}


class PhraseBlocked(Exception):
    """(worker thread) The next phrase breaks the speech policy: none of it is synthesized."""

    def __init__(self, verdict: Verdict):
        super().__init__(verdict.reason)
        self.verdict = verdict


@dataclass(eq=False, kw_only=True)
class Utterance(Task):
    voice: str
    language: str  # the text's, as the voice's model phonemizes it
    speed: float
    text: str = ""  # received, not yet cut into phrases
    phrase: Phrase | None = None  # the phrase being decoded, piece by piece
    chars: int = 0  # received in all
    final: bool = False
    tried: tuple[str, bool] | None = None  # the text (and finality) last found to hold no complete phrase
    seq: int = 0
    samples: int = 0
    synth_ms: float = 0.0
    moderation_ms: float = 0.0  # the speech policy's checks of its phrases, all together
    mark: UtteranceMark | None = None  # its audio watermark, carried from chunk to chunk
    watermark_ms: float = 0.0  # marking its chunks, all together
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

    def __init__(self, config: SpeechConfig, settings: Settings, metrics: EngineMetrics, workers: Workers):
        super().__init__("speech", settings.deadline_s)
        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.workers = workers  # phonemes of arriving text are checked there, off the event loop
        self.model: Voices | None = None
        self.moderator: Moderator | None = None
        self.speeds: dict[VoiceModel, DecodingSpeed] = {}  # each model's, on this machine
        # Set by the engine once no image model is warming up: speeds are timed alone.
        self.timing_alone = threading.Event()
        # Set once the warm-up has computed (or loading failed): image models on the CPU warm up
        # with one thread until then (image_runner.py).
        self.warmed_up = threading.Event()
        self.voices: list[str] = []
        self.default_voice = ""
        self._current: dict[Owner, Utterance] = {}
        self._queue: deque[Utterance] = deque()  # utterances with pieces to decode, in turn
        self._wake = asyncio.Event()
        self._in_hand: Utterance | None = None
        self.watermarker: AudioWatermarker | None = None
        self._utterance_numbers = itertools.count()  # the audio watermark's counter, across sessions

    @property
    def on_cpu(self) -> bool:
        return self.model is not None and self.model.device == "cpu"

    def info(self) -> SpeechInfo | None:
        if self.model is None:
            return None
        return SpeechInfo(name=self.model.name, sample_rate=self.model.sample_rate,
                          voices=self.voices, default_voice=self.default_voice,
                          max_text_chars=self.config.max_text_chars)

    def load_and_warm(self) -> float:
        # The voices' libraries (onnxruntime, soxr, the phonemizers: 0.5 s) load here, on the speech
        # thread beside the image model, not on the main thread before either starts.
        from livegen.models.piper import PiperModel
        from livegen.models.speech import SpeechModel
        from livegen.safety.audio_watermark import AudioWatermarker

        started = time.perf_counter()
        try:
            english = PiperModel(self.config.english_voice, max_text_chars=self.config.max_text_chars)
            kokoro = SpeechModel(self.config.model, self.config.voices, max_text_chars=self.config.max_text_chars)
            self.model = Voices([english, kokoro], self.config.default_voice or english.name, self.config.language)
            self.voices = self.model.list_voices()
            self.default_voice = self.model.default_voice
            if self.settings.safety.speech_moderation:
                with LIBRARY_LOADS:
                    embedder = minilm_embedder()
                self.moderator = Moderator(Policy.load(self.settings.safety.speech_policy or SPEECH_POLICY), embedder)
                self.moderator.check("Ready when you are, let's begin.")
            if self.settings.safety.audio_watermark:
                self.watermarker = AudioWatermarker(self.settings.safety.server_id, self.model.sample_rate)
            self.model.warm_up()
        finally:
            self.warmed_up.set()
        self._set_speeds()
        log.info("speech model warm in %.1fs", time.perf_counter() - started)
        return max(speed.slowest_s for speed in self.speeds.values())

    def _set_speeds(self) -> None:
        """Each model's decoding speed on this machine: kept from an earlier start (timing them takes
        seconds), else timed once the image models' warm-ups are over, so that nothing slows them."""
        kept = kept_speeds()
        keys = {model: f"{cache.machine()}; {model.name}" for model in self.model.models}
        if missing := [model for model, key in keys.items() if key not in kept]:
            self.timing_alone.wait()
            for model in missing:
                kept[keys[model]] = self._measure_speed(model)
            cache.keep(SPEEDS, json.dumps({key: asdict(speed) for key, speed in kept.items()}, indent=1).encode())
        self.speeds = {model: kept[key] for model, key in keys.items()}
        for model, speed in self.speeds.items():
            log.info("%s decoding: %.0f ms a piece + %.2f ms a frame", model.name, speed.piece_s * 1000,
                     speed.frame_s * 1000)

    def _measure_speed(self, model: VoiceModel) -> DecodingSpeed:
        """A model's decoding cost of a piece: a fixed cost plus a cost per frame, context frames included (warm)."""
        phonemes = model.phonemize("This sentence measures how fast the model speaks on this machine.",
                                   self.config.language)

        def timed(seconds: float) -> float:
            phrase = model.prepare(phonemes)
            started = time.perf_counter()
            model.decode(phrase, round(seconds / phrase.frame_s))  # and context frames after them
            return time.perf_counter() - started

        short, long = 0.25, MEASURED_PIECE_S
        short_s = min(timed(short) for _ in range(2))
        long_s = min(timed(long) for _ in range(2))
        frame_s = max(0.0, long_s - short_s) / ((long - short) / model.frame_s)
        piece_s = max(0.0, short_s - frame_s * (short / model.frame_s + model.context_frames))
        return DecodingSpeed(piece_s, frame_s, long_s)

    def _predicted_s(self, utterance: Utterance, frames: int) -> float:
        """Decoding `frames` of the utterance's voice, in one piece, context included."""
        model = self.model.model(utterance.voice)
        speed = self.speeds[model]
        return speed.piece_s + speed.frame_s * (frames + 2 * model.context_frames)

    def _deadline(self, utterance: Utterance, text: str) -> float:
        """A piece may be long (as much as the audio ahead allows): its deadline grows with the frames it
        can hold, a phrase under way's left, else a bound from the text (SECONDS_PER_CHAR)."""
        phrase = utterance.phrase
        frames = (phrase.frames - phrase.decoded if phrase is not None
                  else round(SECONDS_PER_CHAR * len(text) / self.model.model(utterance.voice).frame_s))
        return max(self.deadline_s or MIN_DEADLINE_S, DEADLINE_WARM_MULTIPLE * self._predicted_s(utterance, frames))

    def wake(self, slot: Slot) -> None:
        self._wake.set()

    def in_hand(self) -> list[Task]:
        return [self._in_hand] if self._in_hand is not None else []

    def drain(self, code: str, message: str) -> None:
        """Stop every utterance: those in the queue, and the one in hand once its piece comes back."""
        for utterance in list(self._current.values()):
            self._end(utterance, Error(id=utterance.id, code=code, message=message))
        self._queue.clear()

    # ------------------------------------------------------------------ inputs (event loop)

    def _playing(self, owner: Owner) -> Utterance | None:
        """The session's current utterance, if its ledger still owes it an outcome."""
        utterance = self._current.get(owner)
        if utterance is not None and not owner.owes(utterance):
            self._current.pop(owner, None)
            utterance.stopped = True
            return None
        return utterance

    async def speak(self, session: Owner, request: Speak) -> None:
        """Start an utterance (stopping the session's current one) or add a piece to it. A piece that
        cannot be spoken ends its utterance with the error; a new utterance's is its only answer."""
        utterance = self._playing(session)
        new = utterance is None or utterance.id != request.id
        if new:
            language = self.model.language_of(request.text)
            voice = request.voice or self.model.voice_for(language)
            if voice not in self.voices:
                raise ProtocolError("unknown_voice", f"unknown voice {voice!r}; voices: {', '.join(self.voices)}",
                                    request.id)
            target = Utterance(id=request.id, owner=session, runner=self, voice=voice, language=language,
                               speed=request.speed, received_at=time.perf_counter())
        elif utterance.final:
            raise ProtocolError("invalid", f"utterance {request.id!r} already had its final piece", request.id)
        else:
            target = utterance
        try:
            total = target.chars + len(request.text)
            if total > self.config.max_text_chars:
                raise ProtocolError("text_too_long", f"the utterance has {total} characters; "
                                    f"at most {self.config.max_text_chars}", request.id)
            text = target.text + request.text
            if request.final and not text.strip() and not target.seq and target.phrase is None:
                raise ProtocolError("empty_text", "nothing to say: the text is empty", request.id)
            if text.strip():  # refuse now what cannot be spoken at all
                await self.workers.run(self._split, target, text, self.config.max_text_chars, request.id)
        except ProtocolError as error:
            # Punctuation alone ("(", "...": a language model's first token) waits for words, unless final.
            waits = error.code == "empty_text" and not (new and request.final)
            if new and not waits:
                raise
            if not waits:
                self._end(target, error.to_message())
                return
        if target.stopped:  # answered while its text was checked (a drain, a failure)
            return
        if new:  # valid: it replaces the session's current utterance (barge-in)
            if (playing := self._playing(session)) is not None:
                self._stop(playing, by=request.id)
            self._current[session] = target
            session.accept(target)
            if self.watermarker is not None:  # each utterance spoken gets the next number
                started = time.perf_counter()
                target.mark = self.watermarker.utterance(next(self._utterance_numbers))
                target.watermark_ms += (time.perf_counter() - started) * 1000
        target.text += request.text  # the runner may have cut phrases from its head meanwhile
        target.final, target.chars = request.final, target.chars + len(request.text)
        if not (target.synthesizing or target in self._queue):  # else the runner looks again after it
            self._schedule(target)

    def cancel(self, session: Owner, request: Cancel) -> None:
        utterance = self._playing(session)
        if utterance is None or utterance.id != request.id:
            raise ProtocolError("unknown_utterance", f"no utterance {request.id!r} is playing", request.id)
        self._stop(utterance, by=None)

    def close_session(self, session: Owner) -> None:
        utterance = self._current.pop(session, None)
        if utterance is not None:
            utterance.stopped = True

    def _stop(self, utterance: Utterance, by: str | None) -> None:
        self.metrics.speech_cancelled.inc()
        self._end(utterance, Cancelled(id=utterance.id, by=by))

    def _end(self, utterance: Utterance, outcome: Outcome) -> None:
        """Its last answer: no audio of it follows (a piece still decoding is dropped when it returns)."""
        utterance.stopped = True
        if self._current.get(utterance.owner) is utterance:
            del self._current[utterance.owner]
        if isinstance(outcome, Error):
            self.metrics.errors.labels(outcome.code).inc()
        utterance.owner.answer(utterance, outcome)

    def _split(self, utterance: Utterance, text: str, first_max_chars: int, request_id: str | None = None) -> list[str]:
        try:
            return self.model.split_phrases(text, first_max_chars, utterance.language, utterance.voice)
        except SpeechError as exc:
            raise ProtocolError(exc.code, str(exc), request_id) from exc

    def _next_phrase(self, utterance: Utterance, text: str, final: bool) -> tuple[str | None, str]:
        """(worker thread) The next phrase of `text`, if complete, and the text left after it: a whole
        sentence, or the first clause (or a few words) of a sentence whose end has not arrived yet.
        Text with nothing speakable (")))") waits for more, or is dropped once final."""
        try:
            for cut in (self.config.max_text_chars, self._clause_limit(utterance, text)):
                head, *rest = self._split(utterance, text, cut)
                # The last phrase may still grow, unless the text is final or ends a sentence.
                if rest or final or SENTENCE_DONE.search(text):
                    tail = " ".join(rest)
                    # A comma's pause would be decoded only to be trimmed.
                    return CLAUSE_TAIL.sub("", head) or head, tail + (" " if tail and text[-1:].isspace() else "")
        except ProtocolError as error:
            if error.code != "empty_text":
                raise
            return None, "" if final else text
        return None, text

    def _clause_limit(self, utterance: Utterance, text: str) -> int:
        """The first clause, if it ends within CLAUSE_CHARS, else that many characters; but all of its
        sentence when that leaves a scrap ("Okay, | done."), which would cost a phrase of its own."""
        sentence, *_ = self._split(utterance, text, self.config.max_text_chars)
        clause = CLAUSE_END.search(sentence)
        limit = clause.start() if clause and clause.start() <= CLAUSE_CHARS else CLAUSE_CHARS
        head, *_ = self._split(utterance, text, limit)
        return len(sentence) if len(sentence) - len(head) <= SCRAP_CHARS else limit

    def _piece_end(self, utterance: Utterance, phrase: Phrase) -> int:
        """Where the phrase's next piece ends: the utterance's first piece at `first_piece_end`; later
        pieces at the last word end that can be decoded, with a margin, while the audio ahead of the
        listener plays, but at least MIN_PIECE_S on (smaller pieces would only fall further
        behind); inside a word when no word ends that soon."""
        if utterance.first_audio_at is None:
            return first_piece_end(phrase)
        ends = [end for end in phrase.word_ends if end > phrase.decoded]
        model = self.model.model(utterance.voice)
        speed = self.speeds[model]
        budget = utterance.audio_ahead_s(self.model.sample_rate) / BUDGET_MARGIN - speed.piece_s
        frames = int(budget / speed.frame_s) - 2 * model.context_frames if speed.frame_s else phrase.frames
        frames = max(frames, round(MIN_PIECE_S / phrase.frame_s))
        fits = [end for end in ends if end - phrase.decoded <= frames]
        return fits[-1] if fits else phrase.decoded + frames

    def _decode_next(self, utterance: Utterance, text: str, final: bool) -> tuple[np.ndarray | None, str | None]:
        """(worker thread) With no phrase under way, cut the next one from `text`; decode its next piece.
        Returns the audio (None: no complete phrase yet) and the text left (None: `text` untouched)."""
        left = None
        if utterance.phrase is None:
            phrase_text, left = self._next_phrase(utterance, text, final)
            if phrase_text is None:
                return None, left
            self._moderate(utterance, phrase_text)
            phonemes = self.model.phonemize(phrase_text, utterance.language, utterance.voice)
            utterance.phrase = self.model.prepare(phonemes, utterance.voice, utterance.speed)
        phrase = utterance.phrase
        audio = self.model.decode(phrase, self._piece_end(utterance, phrase))
        if phrase.done:
            utterance.phrase = None
        return audio, left

    def _moderate(self, utterance: Utterance, phrase: str) -> None:
        """(worker thread) Check a phrase against the speech policy before any of it is synthesized."""
        if self.moderator is None:
            return
        started = time.perf_counter()
        verdict = self.moderator.check(phrase)
        utterance.moderation_ms += (time.perf_counter() - started) * 1000
        if verdict.blocked:
            raise PhraseBlocked(verdict)

    def _schedule(self, utterance: Utterance) -> None:
        """Queue it for the worker if a piece of it may be ready to decode; finish it if nothing is left.
        One not yet heard goes ahead of those playing (behind others not yet heard): its listener waits
        in silence, theirs have audio in hand (8 sessions at once: TTFA p50 1.6-2.6x lower, no more
        underruns; docs/benchmarks.md)."""
        if utterance.done:
            self._finish(utterance)
        elif utterance.phrase is not None or (utterance.text.strip()
                                              and utterance.tried != (utterance.text, utterance.final)):
            if utterance.first_audio_at is None:
                heard = (i for i, queued in enumerate(self._queue) if queued.first_audio_at is not None)
                self._queue.insert(next(heard, len(self._queue)), utterance)
            else:
                self._queue.append(utterance)
            self._wake.set()

    # ------------------------------------------------------------------ synthesis (worker thread)

    async def serve(self) -> None:
        while True:
            self._in_hand = None
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            utterance = self._queue.popleft()
            if utterance.stopped or not utterance.owner.owes(utterance):
                continue
            self._in_hand = utterance
            utterance.synthesizing = True
            text, final = utterance.text, utterance.final
            try:
                async with self.turn():
                    started = time.perf_counter()
                    audio, left = await self.compute(self._decode_next, utterance, text, final,
                                                     deadline_s=self._deadline(utterance, text))
            except ComputeTimeout as timeout:
                self._end(utterance, timeout_error(utterance, timeout))
                self.drain("not_ready", "speech is recovering from a stalled computation; send again later")
                await self.recover()
                continue
            except PhraseBlocked as blocked:  # what was spoken before it stays spoken
                category = blocked.verdict.category or "policy"
                self.metrics.blocked.labels("speech", category).inc()
                self._end(utterance, Blocked(id=utterance.id, stage="speech", category=category,
                                             message=f"a phrase of the reply breaks the speech policy ({category}: "
                                                     f"{blocked.verdict.reason}); it and the rest were not spoken"))
                continue
            except (ProtocolError, SpeechError) as error:  # text that reached the model and cannot be spoken
                self._end(utterance, Error(id=utterance.id, code=error.code, message=str(error)))
                continue
            except Exception as exc:  # one bad phrase must not stop the runner
                self.metrics.errors.labels("internal").inc()
                self.fail([utterance], exc, "synthesis failed")
                utterance.stopped = True
                self._current.pop(utterance.owner, None)
                continue
            finally:
                utterance.synthesizing = False
            if utterance.stopped:  # cancelled while this piece was decoded: drop it
                continue
            if left is not None:
                utterance.text = left + utterance.text[len(text):]
            if audio is not None:
                utterance.synth_ms += (time.perf_counter() - started) * 1000
                self._send(utterance, audio)
            else:  # no complete phrase in it: look again when more text (or the final piece) arrives
                utterance.tried = (text, final)
            self._schedule(utterance)  # its next piece, after the other sessions' turns

    def _send(self, utterance: Utterance, audio: np.ndarray) -> None:
        """A decoded piece goes out as CHUNK_MS chunks, each watermarked as it leaves."""
        step = self.model.sample_rate * CHUNK_MS // 1000
        if utterance.first_audio_at is None and len(audio):
            utterance.first_audio_at = time.perf_counter()
            self.metrics.speech_ttfa.observe(utterance.first_audio_at - utterance.received_at)
        for begin in range(0, len(audio), step):
            chunk = audio[begin:begin + step]
            if utterance.mark is not None:
                started = time.perf_counter()
                chunk = utterance.mark.mark(chunk)
                utterance.watermark_ms += (time.perf_counter() - started) * 1000
            pcm = to_pcm16(chunk)
            utterance.owner.answer(utterance, Audio(id=utterance.id, seq=utterance.seq,
                                                    sample_rate=self.model.sample_rate, pcm=pcm.tobytes()),
                                   final=False)
            utterance.seq += 1
        utterance.samples += len(audio)
        self.metrics.speech_seconds.inc(len(audio) / self.model.sample_rate)

    def _finish(self, utterance: Utterance) -> None:
        now = time.perf_counter()
        ttfa = (utterance.first_audio_at or now) - utterance.received_at
        self._end(utterance, SpeechEnd(
            id=utterance.id, chunks=utterance.seq, samples=utterance.samples, sample_rate=self.model.sample_rate,
            timings={"ttfa_ms": round(ttfa * 1000, 3), "synth_ms": round(utterance.synth_ms, 3),
                     "moderation_ms": round(utterance.moderation_ms, 3),
                     "watermark_ms": round(utterance.watermark_ms, 3),
                     "total_ms": round((now - utterance.received_at) * 1000, 3)}))
