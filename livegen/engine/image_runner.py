"""The image runner: one warm model, fed the latest input of each session in shared batches.

Batch formation runs on the event loop; compute runs on one worker thread so sockets stay
responsive. Inputs with the same BatchSpec (size, steps, guidance, strength) from different
sessions share one forward pass, up to `max_batch`, waiting at most `batch_wait_ms` for
companions, and only while other recently active sessions could send one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from livegen.config import ModelConfig, Settings
from livegen.engine.images import encode_frame
from livegen.engine.metrics import EngineMetrics
from livegen.engine.runner import Runner, Task
from livegen.engine.session import Session
from livegen.models.base import BatchSpec, ImageGenerator, PromptEmbedding
from livegen.models.loader import load_generator
from livegen.protocol import Blocked, Error, Frame, Generate
from livegen.safety.stages import SafetyStages

log = logging.getLogger(__name__)

ACTIVE_WINDOW_S = 1.0  # a session that sent an input this recently may send a batch companion
NOISE_CACHE_SIZE = 64


@dataclass(eq=False)
class ImageTask(Task):
    request: Generate | None = None
    spec: BatchSpec | None = None
    seed: int = 0
    image: np.ndarray | None = None  # decoded input for image-to-image

    @property
    def similarity_key(self) -> tuple:
        """What must be equal, besides a similar image, for an input to reuse this one's frame."""
        r = self.request
        assert r is not None
        return (self.runner.name, self.spec, self.seed, r.prompt, r.blend_prompt, r.blend, r.format, r.quality)


class ImageRunner(Runner):
    kind = "image"

    def __init__(self, config: ModelConfig, settings: Settings, metrics: EngineMetrics,
                 frame_numbers: Iterator[int]):
        self.config = config
        self.name = config.display_name
        self.settings = settings
        self.metrics = metrics
        self.generator: ImageGenerator | None = None
        self.safety: SafetyStages | None = None
        self._frame_numbers = frame_numbers  # the watermark's frame counter, shared by the server's runners
        self._ready = False
        self._sessions: set[Session] = set()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"runner-{self.name}")
        self._loop_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def on_cpu(self) -> bool:
        return self.generator is not None and self.generator.device.type == "cpu"

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_and_warm)
        self._ready = True
        self._loop_task = asyncio.create_task(self._serve(), name=f"runner-{self.name}")

    def _load_and_warm(self) -> None:
        # OpenMP settings are per thread: without this, a worker thread started from a thread
        # other than the main one can run its kernels ~40% slower (measured on the 2-core CPU).
        torch.set_num_threads(torch.get_num_threads())
        self.generator = load_generator(self.config)
        self.safety = SafetyStages(self.settings.safety, self.generator, self._frame_numbers)
        self.encode_prompt = lru_cache(maxsize=self.settings.prompt_cache_size)(self.generator.encode_prompt)
        self.make_noise = lru_cache(maxsize=NOISE_CACHE_SIZE)(self.generator.make_noise)
        started = time.perf_counter()
        guidance = self.generator.description.default_guidance
        # Every served size, image- and text-to-image, at every batch size up to a full batch: the
        # shapes real inputs will have (a batch size met first after ready cost seconds on the CPU,
        # where each new shape builds its convolution kernels). The most common first input (one
        # text-to-image frame) runs last, so it finds its kernels chosen and its memory ready.
        for width, height in self.generator.description.sizes:
            image = np.full((height, width, 3), 127, np.uint8)
            for batch in range(self.settings.max_batch, 0, -1):
                for strength in (0.5, None):
                    spec = BatchSpec(width, height, 1, guidance, strength)
                    tasks = [
                        ImageTask(id="warmup", runner=self, received_at=time.perf_counter(), spec=spec,
                                  seed=i, image=image if strength else None,
                                  request=Generate(id="warmup", prompt=f"warm-up {i}"))
                        for i in range(batch)
                    ]
                    for _ in range(self.settings.warmup_runs if batch == 1 else 1):
                        self._compute(tasks)
        log.info("%s warm in %.1fs", self.name, time.perf_counter() - started)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ batch formation

    def wake(self, session: Session) -> None:
        self._sessions.add(session)
        self._wake.set()

    def _eligible(self) -> list[ImageTask]:
        for session in [s for s in self._sessions if s.closed]:
            self._sessions.discard(session)
        tasks = [s.pending for s in self._sessions if s.eligible and s.pending.runner is self]
        self.metrics.queue_depth.labels(self.name).set(len(tasks))
        return sorted(tasks, key=lambda t: t.received_at)  # type: ignore[arg-type]

    def _others_may_join(self, group: list[ImageTask]) -> bool:
        now = time.perf_counter()
        in_group = {task.session for task in group}
        return any(
            s not in in_group and not s.closed and now - s.last_input_at < ACTIVE_WINDOW_S
            for s in self._sessions
        )

    async def _next_batch(self) -> list[ImageTask]:
        while True:
            tasks = self._eligible()
            if not tasks:
                self._wake.clear()
                await self._wake.wait()
                continue
            spec = tasks[0].spec
            group = [t for t in tasks if t.spec == spec][: self.settings.max_batch]
            wait = tasks[0].received_at + self.settings.batch_wait_ms / 1000 - time.perf_counter()
            if len(group) < self.settings.max_batch and wait > 0 and self._others_may_join(group):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                continue
            return [task.session.take() for task in group]  # type: ignore[misc]

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self._next_batch()
            try:
                async with self.turn():
                    started = time.perf_counter()  # a wait for the CPU's turn counts as queueing
                    for task in group:
                        task.timings["queue_ms"] = (started - task.received_at) * 1000
                    outcomes = await loop.run_in_executor(self._executor, self._compute, group)
            except Exception as exc:  # one bad batch must not stop the runner
                log.exception("batch failed on %s", self.name)
                for task in group:
                    self.metrics.errors.labels("internal").inc()
                    task.session.emit(Error(id=task.id, code="internal", message=f"generation failed: {exc}"),
                                      finishes=task)
                continue
            if outcomes is None:  # every session in the batch left while it ran
                self.metrics.cancelled.labels(self.name).inc(len(group))
                continue
            self.metrics.batch_size.labels(self.name).observe(len(group))
            for task, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Frame):
                    self._record(outcome)
                    task.session.remember(outcome, self.generation(outcome, task.request))
                else:
                    self.metrics.blocked.labels(outcome.stage, outcome.category).inc()
                task.session.emit(outcome, finishes=task)

    def generation(self, frame: Frame, request: Generate) -> dict:
        """What made the frame, for its Content Credentials: settings and a hash of the prompt,
        never the prompt itself."""
        assert self.generator is not None
        guidance = self.generator.description.default_guidance if request.guidance is None else request.guidance
        return {"model": frame.model, "steps": request.steps, "seed": frame.seed, "guidance": guidance,
                "size": f"{frame.width}x{frame.height}", "image_to_image": request.image is not None,
                "prompt_sha256": hashlib.sha256(request.prompt.encode()).hexdigest()}

    def _record(self, frame: Frame) -> None:
        self.metrics.frames.labels(self.name).inc()
        self.metrics.time_to_frame.labels(self.name).observe(frame.timings["total_ms"] / 1000)
        for stage, ms in frame.timings.items():
            if stage != "total_ms":
                self.metrics.stage.labels(self.name, stage.removesuffix("_ms")).observe(ms / 1000)

    # ------------------------------------------------------------------ compute (worker thread)

    def _timed(self, tasks: list[ImageTask], stage: str, started: float) -> float:
        now = time.perf_counter()
        for task in tasks:
            task.timings[stage] = (now - started) * 1000
        return now

    def _embed(self, prompt: str) -> PromptEmbedding:
        hits = self.encode_prompt.cache_info().hits
        embedding = self.encode_prompt(prompt)
        cached = self.encode_prompt.cache_info().hits > hits
        self.metrics.prompt_cache.labels(self.name, "hit" if cached else "miss").inc()
        return embedding

    def _compute(self, tasks: list[ImageTask]) -> list[Frame | Blocked] | None:
        """Moderate each prompt, then generate for those that pass; one outcome per task, in order."""
        assert self.safety is not None
        blocked: dict[ImageTask, Blocked] = {}
        for task in tasks:
            started = time.perf_counter()
            if (verdict := self.safety.moderate(task.request)) is not None:
                blocked[task] = verdict
            task.timings["moderation_ms"] = (time.perf_counter() - started) * 1000
        allowed = [task for task in tasks if task not in blocked]
        generated = self._generate(allowed) if allowed else []
        if generated is None:
            return None
        made = iter(generated)
        return [blocked.get(task) or next(made) for task in tasks]

    def _generate(self, tasks: list[ImageTask]) -> list[Frame | Blocked] | None:
        generator = self.generator
        spec = tasks[0].spec
        assert generator is not None and spec is not None and self.safety is not None
        prompts = []
        for task in tasks:
            started = time.perf_counter()
            request = task.request
            embedding = self._embed(request.prompt)
            if request.blend_prompt is not None and request.blend > 0:
                embedding = embedding.blend(self._embed(request.blend_prompt), request.blend)
            prompts.append(embedding)
            task.timings["text_encode_ms"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        noise = torch.cat([self.make_noise(spec.width, spec.height, task.seed) for task in tasks])
        image_latents = None
        if spec.strength is not None:
            image_latents = generator.encode_images(np.stack([task.image for task in tasks]))
            started = self._timed(tasks, "image_encode_ms", started)

        def should_stop() -> bool:
            return all(task.session is not None and task.session.closed for task in tasks)

        latents = generator.denoise(spec, prompts, noise, image_latents, [t.seed for t in tasks], should_stop)
        if latents is None:
            return None
        started = self._timed(tasks, "denoise_ms", started)
        pixels = generator.decode_on_device(latents)
        started = self._timed(tasks, "decode_ms", started)
        # No frame is encoded, let alone sent, before the output check has passed it.
        flags = self.safety.check(pixels)
        started = self._timed(tasks, "check_ms", started)
        pixels = self.safety.watermark(pixels).cpu().numpy()
        self._timed(tasks, "watermark_ms", started)

        frames: list[Frame | Blocked] = []
        for task, image, flag in zip(tasks, pixels, flags, strict=True):
            request = task.request
            if flag is not None:
                frames.append(Blocked(id=task.id, stage="output", category=flag,
                                      message=f"the frame failed the output check ({flag}); it was not sent"))
                continue
            started = time.perf_counter()
            data = encode_frame(image, request.format, request.quality)
            now = time.perf_counter()
            task.timings["wire_encode_ms"] = (now - started) * 1000
            task.timings["total_ms"] = (now - task.received_at) * 1000
            frames.append(Frame(
                id=task.id, image=data, format=request.format, width=spec.width, height=spec.height,
                model=self.name, seed=task.seed, batch_size=len(tasks),
                timings={k: round(v, 3) for k, v in task.timings.items()},
            ))
        return frames
