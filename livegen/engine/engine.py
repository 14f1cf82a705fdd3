"""The engine: warm runners by model name, their supervisor, sessions, and the way in for inputs.

This is the whole surface the server uses (open a session, submit, read outcomes, drain); it
never imports the web framework, so the same engine runs under uvicorn, in tests, in benchmarks
and in a Ray Serve replica. It wires admission, sessions, runners and provenance together and
holds no logic of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping

from livegen import cache
from livegen.config import Settings
from livegen.engine import admission
from livegen.engine.image_runner import ImageRunner, ImageTask
from livegen.engine.images import MEDIA_TYPES
from livegen.engine.metrics import EngineMetrics
from livegen.engine.remote_runner import RemoteImageRunner, RemoteModel
from livegen.engine.runner import Runner, incident, internal_error
from livegen.engine.session import EXPORTABLE_FRAMES, EXPORTABLE_UTTERANCES, Session
from livegen.engine.speech_runner import SpeechRunner
from livegen.engine.supervisor import Supervisor
from livegen.engine.watchdog import LoopWatchdog
from livegen.engine.workers import Workers
from livegen.models.base import ModelError
from livegen.protocol import (ClientRequest, Export, Exported, Frame, Generate, ModelInfo, Outcome, ProtocolError, Speak,
                              SpeechEnd, wav_file)
from livegen.safety.provenance import Provenance, generation_record, load_provenance

log = logging.getLogger(__name__)

SOCKETS_CLOSE_S = 1.0
SHUTTING_DOWN = "the server is shutting down; reconnect (to another replica, or once it is back)"


class EngineBusy(Exception):
    """No room for another session, or the server is shutting down."""


class Engine:
    def __init__(self, settings: Settings, remote: Mapping[str, RemoteModel] | None = None):
        """`remote`: models computed elsewhere (on Ray Serve, deployments of their own), by name."""
        self.settings = settings
        self.metrics = EngineMetrics()
        self.workers = Workers(settings.worker_threads)
        self.supervisor = Supervisor(self.metrics)
        self.watchdog = LoopWatchdog(self.metrics, settings.loop_stall_seconds)
        frame_numbers = itertools.count()  # every frame's watermark names its number on this server
        remote = remote or {}
        self.speech = (SpeechRunner(settings.speech, settings, self.metrics, self.workers)
                       if settings.speech else None)
        speech_warm = self.speech.warmed_up if self.speech else None
        self.runners = {c.display_name: RemoteImageRunner(c, settings, self.metrics, remote[c.display_name])
                        if c.display_name in remote else ImageRunner(c, settings, self.metrics, frame_numbers, speech_warm)
                        for c in settings.models}
        self.default_model = next(iter(self.runners), None)
        self.sessions: set[Session] = set()
        self.started_at = time.time()
        self.start_error: str | None = None
        self.speech_error: str | None = None
        self.draining = False
        self.provenance: Provenance | None = None

    # ------------------------------------------------------------------ life cycle and health

    @property
    def all_runners(self) -> list[Runner]:
        return [*self.runners.values(), *([self.speech] if self.speech else [])]

    @property
    def ready(self) -> bool:
        return not self.unready_reasons()

    def unready_reasons(self) -> dict[str, str]:
        """Why /readyz is not 200: per runner, and the server's own state."""
        reasons = {runner.name: reason for runner in self.all_runners if (reason := runner.unready_reason)}
        if not self.all_runners:
            reasons["server"] = "no model configured: start with --model PATH"
        if self.start_error:
            reasons["server"] = f"start-up failed: {self.start_error}"
        if self.draining:
            reasons["server"] = "shutting down"
        return reasons

    async def start(self) -> None:
        """Load and warm every model, then serve; ready only when all of them are."""
        self.watchdog.start()
        try:
            self.provenance = await self.workers.run(load_provenance, self.settings.safety.keys)
            # Speech (on the CPU) loads and warms up beside the image models, whose imports and traces
            # leave it the GIL while onnxruntime works; it times its decoding once they are warm. The
            # image models warm one at a time: a CUDA graph's capture must have the GPU to itself.
            speech = asyncio.create_task(self._start_speech())
            try:
                for runner in self.runners.values():
                    await runner.start()
            finally:
                if self.speech:
                    self.speech.timing_alone.set()
                await speech
        except Exception as exc:
            self.start_error = f"{type(exc).__name__}: {exc}"
            raise
        if self.settings.cpu_turns:
            turn = asyncio.Lock()  # first come, first served
            for runner in self.all_runners:
                runner.cpu_turn = turn if runner.on_cpu else None
        for runner in self.all_runners:
            self.supervisor.watch(runner)
        await self.workers.run(cache.prune)  # what this start used is marked: the rest an upgrade left behind
        self.metrics.ready.set(1)
        log.info("ready after %.1fs", time.time() - self.started_at)

    def acceleration(self) -> dict:
        """What /readyz says about how each image model runs."""
        return {name: runner.generator.describe_acceleration() for name, runner in self.runners.items()
                if runner.generator is not None}

    def safety(self) -> dict:
        """What /readyz says about the checks every input and frame passes."""
        stages = next((r.safety.describe() for r in self.runners.values() if r.safety), {})
        signer = self.provenance.keys.cert_chain if self.provenance else None
        moderator = self.speech.moderator if self.speech else None
        return {**stages, "speech_moderation": moderator.policy.source if moderator else None,
                "audio_watermark": bool(self.speech and self.speech.watermarker),
                "content_credentials": str(signer) if signer else None}

    async def _start_speech(self) -> None:
        """Speech is on by default, but a machine without espeak-ng still serves images: unless
        speech was asked for explicitly, a model that cannot load turns speech off, with the reason."""
        if self.speech is None:
            return
        try:
            await self.speech.start()
        except ModelError as exc:
            if "speech" in self.settings.model_fields_set:
                raise
            self.speech_error = str(exc)
            log.warning("speech is off: %s", exc)
            await self.speech.stop()
            self.speech = None

    async def drain(self, seconds: float) -> None:
        """Stop taking work, answer what waits `shutting_down`, let running batches finish and their
        outcomes go out, for at most `seconds`; then every session is told to end."""
        self.draining = True
        self.metrics.ready.set(0)
        log.info("draining %d sessions for at most %.0f s", len(self.sessions), seconds)
        for runner in self.all_runners:
            runner.drain("shutting_down", SHUTTING_DOWN)
        deadline = time.monotonic() + seconds
        while any(not s.settled for s in self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for session in list(self.sessions):
            session.end()
        deadline = time.monotonic() + SOCKETS_CLOSE_S
        while self.sessions and time.monotonic() < deadline:  # each socket closes with 1001, then its session
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.supervisor.stop()
        for session in list(self.sessions):
            self.close_session(session)
        for runner in self.all_runners:
            await runner.stop()
        self.workers.stop()
        self.watchdog.stop()

    def models(self) -> list[ModelInfo]:
        infos = []
        for runner in self.runners.values():
            if runner.generator is None:
                continue
            d = runner.generator.description
            infos.append(ModelInfo(name=d.name, family=d.family, device=d.device, sizes=d.sizes,
                                   default_guidance=d.default_guidance, image_to_image=d.image_to_image))
        return infos

    # ------------------------------------------------------------------ sessions

    def open_session(self) -> Session:
        if self.draining:
            raise EngineBusy(SHUTTING_DOWN)
        if len(self.sessions) >= self.settings.max_sessions:
            raise EngineBusy(f"the server holds its limit of {self.settings.max_sessions} sessions")
        session = Session()
        self.sessions.add(session)
        self.metrics.sessions.set(len(self.sessions))
        return session

    def close_session(self, session: Session) -> None:
        """The client left: what it was owed is dropped; a running batch stops if nobody else needs it."""
        if self.speech:
            self.speech.close_session(session)
        for task in session.owed:
            self.metrics.cancelled.labels(task.runner.name).inc()  # type: ignore[attr-defined]
        session.close()
        self.sessions.discard(session)
        self.metrics.sessions.set(len(self.sessions))

    def reject(self, session: Session, error: ProtocolError) -> None:
        """Answer a message that could not be served."""
        self.metrics.errors.labels(error.code).inc()
        session.send(error.to_message())

    def fail(self, session: Session, exc: BaseException, request_id: str | None = None) -> None:
        """A message that met a bug: answer it `internal`, naming the incident in the log."""
        self.metrics.errors.labels("internal").inc()
        session.send(internal_error(request_id, incident(exc, f"session {session.id}: a message failed")))

    async def submit(self, session: Session, request: ClientRequest) -> None:
        """Take one client message: an image input, a piece of speech, a cancel or an export; errors are answered."""
        try:
            if isinstance(request, Export):
                await self._export(session, request)
                return
            if self.draining:
                raise ProtocolError("shutting_down", SHUTTING_DOWN, request.id)
            if isinstance(request, Generate):
                await self._submit_image(session, request)
                return
            if self.speech is None:
                raise ProtocolError("no_speech_model", "this server serves no speech model", request.id)
            if not self.speech.ready:
                raise ProtocolError("not_ready", f"speech is not ready ({self.speech.unready_reason})", request.id)
            if isinstance(request, Speak):
                await self.speech.speak(session, request)
            else:
                self.speech.cancel(session, request)
        except ProtocolError as error:
            self.reject(session, error)
        except Exception as exc:
            self.fail(session, exc, request.id)

    async def _submit_image(self, session: Session, request: Generate) -> None:
        """Admit an input into the session's slot, or answer it at once with a typed error."""
        session.last_input_at = time.perf_counter()
        task = await admission.image_task(request, session, self.runners, self.default_model, self.settings,
                                          self.workers)
        skipped = await admission.similar_to_last_frame(task, session, self.workers)
        if self.draining:  # it began while the input was admitted
            raise ProtocolError("shutting_down", SHUTTING_DOWN, request.id)
        if session.closed:
            return
        if skipped is not None:
            self.metrics.skipped.inc()
            session.accept(task)
            session.answer(task, skipped)
        elif session.offer(task) is not None:
            self.metrics.superseded.inc()

    async def credentials(self, frame: Frame, task: ImageTask) -> bytes:
        """The frame's file with a signed C2PA manifest saying what made it (on a worker thread)."""
        assert self.provenance is not None, "signing keys load at start"
        generation = generation_record(frame, task.request, task.spec.guidance)
        return await self.workers.run(self.provenance.sign, frame.image, MEDIA_TYPES[frame.format], generation)

    async def _export(self, session: Session, request: Export) -> None:
        if request.id in session.spoken:
            session.send(Exported(id=request.id, image=await self._speech_credentials(*session.spoken[request.id]),
                                  format="wav"))
            return
        if request.id not in session.recent:
            raise ProtocolError("unknown_frame", f"no frame {request.id!r} among this session's last "
                                f"{EXPORTABLE_FRAMES}, nor an utterance among its last {EXPORTABLE_UTTERANCES}",
                                request.id)
        frame, task = session.recent[request.id]
        image = await self.credentials(frame, task)  # type: ignore[arg-type]
        session.send(Exported(id=frame.id, image=image, format=frame.format))

    async def _speech_credentials(self, end: SpeechEnd, pcm: bytes) -> bytes:
        """An utterance's audio as a WAV file with signed Content Credentials."""
        assert self.provenance is not None, "signing keys load at start"
        info = self.speech.info() if self.speech else None
        generation = {"model": info.name if info else None, "sample_rate": end.sample_rate,
                      "seconds": round(len(pcm) / 2 / end.sample_rate, 3)}
        return await self.workers.run(self.provenance.sign, wav_file(pcm, end.sample_rate), "audio/wav", generation)

    async def generate(self, request: Generate) -> Outcome:
        """One input, one outcome, on a session of its own (HTTP, CLI); a frame comes signed."""
        session = self.open_session()
        try:
            await self.submit(session, request)
            outcome = await session.next_outcome()
            if isinstance(outcome, Frame):
                frame, task = session.recent[outcome.id]
                return outcome.model_copy(update={"image": await self.credentials(frame, task)})  # type: ignore[arg-type]
            return outcome
        finally:
            self.close_session(session)
