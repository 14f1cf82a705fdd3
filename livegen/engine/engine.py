"""The engine: warm runners by model name, sessions, and the checks an input passes to reach one.

This is the whole surface the server uses (open a session, submit, read outcomes); it never
imports the web framework, so the same engine runs under uvicorn, in tests and in benchmarks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from livegen.config import Settings
from livegen.engine.image_runner import ImageRunner, ImageTask
from livegen.engine.images import MEDIA_TYPES, BadImage, decode_input_image, image_similarity
from livegen.engine.metrics import EngineMetrics
from livegen.engine.runner import Runner
from livegen.engine.session import EXPORTABLE_FRAMES, Session
from livegen.engine.speech_runner import SpeechRunner
from livegen.models.base import BatchSpec, ModelError
from livegen.protocol import (ClientRequest, Export, Exported, Frame, Generate, ModelInfo, Outcome, ProtocolError,
                              Skipped, Speak)
from livegen.safety.provenance import Provenance, ProvenanceError, SigningKeys, init_keys

log = logging.getLogger(__name__)


class EngineBusy(Exception):
    """No room for another session."""


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = EngineMetrics()
        frame_numbers = itertools.count()  # every frame's watermark names its number on this server
        self.runners = {c.display_name: ImageRunner(c, settings, self.metrics, frame_numbers)
                        for c in settings.models}
        self.default_model = next(iter(self.runners), None)
        self.speech = SpeechRunner(settings.speech, settings, self.metrics) if settings.speech else None
        self.sessions: set[Session] = set()
        self.started_at = time.time()
        self.start_error: str | None = None
        self.speech_error: str | None = None
        self.provenance: Provenance | None = None

    # ------------------------------------------------------------------ life cycle

    @property
    def all_runners(self) -> list[Runner]:
        return [*self.runners.values(), *([self.speech] if self.speech else [])]

    @property
    def ready(self) -> bool:
        return bool(self.all_runners) and all(r.ready for r in self.all_runners)

    async def start(self) -> None:
        """Load and warm every model; ready only when all of them are."""
        try:
            self.provenance = self._load_provenance()
            for runner in self.runners.values():
                await runner.start()
            await self._start_speech()
        except Exception as exc:
            self.start_error = f"{type(exc).__name__}: {exc}"
            raise
        if self.settings.cpu_turns:
            turn = asyncio.Lock()  # first come, first served
            for runner in self.all_runners:
                runner.cpu_turn = turn if runner.on_cpu else None
        self.metrics.ready.set(1)
        log.info("ready after %.1fs", time.time() - self.started_at)

    def _load_provenance(self) -> Provenance:
        """The signing keys for Content Credentials; a development chain if none are there yet."""
        directory = self.settings.safety.keys
        keys = SigningKeys.in_directory(directory)
        if not keys.cert_chain.exists() and not keys.private_key.exists():
            try:
                init_keys(directory)
            except OSError as exc:
                raise ProvenanceError(f"cannot make a development signing chain in {directory} ({exc}): set "
                                      "LIVEGEN_SAFETY__KEYS (--keys) to a writable folder, or put a chain there") from exc
            log.warning("made a development signing chain in %s: exports are signed, but trusted only where "
                        "its root.pem is; put a real chain and key there for production", directory)
        return Provenance(keys)

    def safety(self) -> dict:
        """What /readyz says about the checks every input and frame passes."""
        stages = next((r.safety.describe() for r in self.runners.values() if r.safety), {})
        signer = self.provenance.keys.cert_chain if self.provenance else None
        return {**stages, "content_credentials": str(signer) if signer else None}

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

    async def stop(self) -> None:
        for session in list(self.sessions):
            self.close_session(session)
        for runner in self.all_runners:
            await runner.stop()

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
        if len(self.sessions) >= self.settings.max_sessions:
            raise EngineBusy(f"the server holds its limit of {self.settings.max_sessions} sessions")
        session = Session()
        self.sessions.add(session)
        self.metrics.sessions.set(len(self.sessions))
        return session

    def close_session(self, session: Session) -> None:
        """The client left: drop its waiting input; a running batch stops if nobody else needs it."""
        if session.pending is not None:
            self.metrics.cancelled.labels(session.pending.runner.name).inc()
        if self.speech:
            self.speech.close_session(session)
        session.close()
        self.sessions.discard(session)
        self.metrics.sessions.set(len(self.sessions))

    def reject(self, session: Session, error: ProtocolError) -> None:
        """Answer a message that could not be served, on the session's outbox."""
        self.metrics.errors.labels(error.code).inc()
        session.emit(error.to_message())

    def submit(self, session: Session, request: ClientRequest) -> None:
        """Take one client message: an image input, a piece of speech or a cancel; errors are answered."""
        if isinstance(request, Generate):
            self._submit_image(session, request)
            return
        try:
            if isinstance(request, Export):
                self._export(session, request)
                return
            if not self.ready:
                raise ProtocolError("not_ready", "the server is still loading and warming its models", request.id)
            if self.speech is None:
                raise ProtocolError("no_speech_model", "this server serves no speech model", request.id)
            if isinstance(request, Speak):
                self.speech.speak(session, request)
            else:
                self.speech.cancel(session, request)
        except ProtocolError as error:
            self.reject(session, error)

    def credentials(self, frame: Frame, generation: dict) -> bytes:
        """The frame's file with a signed C2PA manifest saying what made it."""
        assert self.provenance is not None, "signing keys load at start"
        return self.provenance.sign(frame.image, MEDIA_TYPES[frame.format], generation)

    def _export(self, session: Session, request: Export) -> None:
        if request.id not in session.recent:
            raise ProtocolError("unknown_frame", f"no frame {request.id!r} among this session's last "
                                f"{EXPORTABLE_FRAMES}", request.id)
        frame, generation = session.recent[request.id]
        session.emit(Exported(id=frame.id, image=self.credentials(frame, generation), format=frame.format))

    def _submit_image(self, session: Session, request: Generate) -> None:
        """Accept an input into the session's slot, or answer it at once with a typed error."""
        received_at = time.perf_counter()
        session.last_input_at = received_at
        try:
            task = self._task(session, request, received_at)
        except ProtocolError as error:
            self.reject(session, error)
            return
        if (skipped := self._similar_to_last(session, task)) is not None:
            self.metrics.skipped.inc()
            session.emit(skipped)
            return
        if session.offer(task) is not None:
            self.metrics.superseded.inc()

    @staticmethod
    def _similar_to_last(session: Session, task: ImageTask) -> Skipped | None:
        """The similarity filter: a camera frame that barely moved reuses the last input's frame."""
        threshold = task.request.similarity_filter  # type: ignore[union-attr]
        last = session.last_accepted
        if (threshold is None or task.image is None or not isinstance(last, ImageTask) or last.image is None
                or last.similarity_key != task.similarity_key):
            return None
        similarity = image_similarity(task.image, last.image)
        if similarity < threshold:
            return None
        return Skipped(id=task.id, frame=last.id, similarity=round(similarity, 5))

    def _task(self, session: Session, request: Generate, received_at: float) -> ImageTask:
        def fail(code: str, message: str) -> ProtocolError:
            return ProtocolError(code, message, request.id)

        if not self.ready:
            raise fail("not_ready", "the server is still loading and warming its models; retry after /readyz")
        name = request.model or self.default_model
        runner = self.runners.get(name or "")
        if runner is None:
            raise fail("unknown_model", f"unknown model {request.model!r}; served: {sorted(self.runners)}")
        for field, text in (("prompt", request.prompt), ("blend_prompt", request.blend_prompt or "")):
            if len(text) > self.settings.max_prompt_chars:
                raise fail("prompt_too_long",
                           f"{field} has {len(text)} characters; at most {self.settings.max_prompt_chars}")
        description = runner.generator.description  # type: ignore[union-attr]
        width, height = request.width, request.height
        if not width and not height:
            width, height = description.sizes[0]
        if (width, height) not in description.sizes:
            served = ", ".join(f"{w}x{h}" for w, h in description.sizes)
            raise fail("size_not_served", f"{width}x{height} is not served by {name}; served sizes: {served}")
        image = None
        if request.image is not None:
            try:
                image = decode_input_image(request.image, width, height)
            except BadImage as exc:
                raise fail("bad_image", str(exc)) from exc
        guidance = description.default_guidance if request.guidance is None else request.guidance
        spec = BatchSpec(width, height, request.steps, guidance, request.strength if image is not None else None)
        return ImageTask(
            id=request.id, runner=runner, session=session, received_at=received_at, request=request,
            spec=spec, seed=session.seed if request.seed is None else request.seed, image=image,
        )

    async def generate(self, request: Generate) -> Outcome:
        """One input, one outcome, on a session of its own (HTTP, CLI); a frame comes signed."""
        session = self.open_session()
        try:
            self.submit(session, request)
            outcome = await session.next_outcome()
        finally:
            self.close_session(session)
        if isinstance(outcome, Frame):
            generation = self.runners[outcome.model].generation(outcome, request)
            return outcome.model_copy(update={"image": self.credentials(outcome, generation)})
        return outcome

