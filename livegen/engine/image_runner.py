"""The image runner: one warm model, fed the latest input of each session in shared batches.

Batch formation runs on the event loop; compute runs on one worker thread so sockets stay
responsive. Inputs with the same BatchSpec (size, steps, guidance, strength) from different
sessions share one forward pass, up to `max_batch`, waiting at most `batch_wait_ms` for
companions, and only while other recently active sessions could send one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from livegen.config import ModelConfig, Settings
from livegen.engine.images import encode_frame
from livegen.engine.metrics import EngineMetrics
from livegen.engine.runner import ComputeTimeout, Runner, timeout_error
from livegen.engine.task import Slot, Task
from livegen.models import LIBRARY_LOADS
from livegen.models.base import BatchSpec, ImageGenerator, PromptEmbedding
from livegen.models.packed import keep_pack, load_pack
from livegen.protocol import Blocked, Frame, Generate
from livegen.safety.stages import SafetyStages

log = logging.getLogger(__name__)

ACTIVE_WINDOW_S = 1.0  # a session that sent an input this recently may send a batch companion
NOISE_CACHE_SIZE = 64


class _Unowned:
    """The owner of tasks whose outcomes nobody here is owed: the warm-up's, and a batch computed
    for another process (engine/remote_runner.py)."""

    closed = False

    def answer(self, task: Task, outcome: object, final: bool = True) -> bool:
        return False


UNOWNED = _Unowned()


@dataclass(eq=False, kw_only=True)
class ImageTask(Task):
    request: Generate
    spec: BatchSpec
    seed: int = 0
    image: np.ndarray | None = None  # decoded input for image-to-image

    @property
    def similarity_key(self) -> tuple:
        """What must be equal, besides a similar image, for an input to reuse this one's frame."""
        r = self.request
        return (self.runner, self.spec, self.seed, r.prompt, r.blend_prompt, r.blend, r.format, r.quality)


class ImageRunner(Runner):
    kind = "image"

    def __init__(self, config: ModelConfig, settings: Settings, metrics: EngineMetrics,
                 frame_numbers: Iterator[int], speech_warm: threading.Event | None = None):
        """`speech_warm`: set once a speech model loading beside this one has warmed up."""
        super().__init__(config.display_name, settings.deadline_s)
        self._speech_warm = speech_warm
        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.generator: ImageGenerator | None = None
        self.safety: SafetyStages | None = None
        self._frame_numbers = frame_numbers  # the watermark's frame counter, shared by the server's runners
        self._slots: set[Slot] = set()
        self._wake = asyncio.Event()
        self._in_hand: list[ImageTask] = []

    @property
    def on_cpu(self) -> bool:
        return self.generator is not None and self.generator.device.type == "cpu"

    # ------------------------------------------------------------------ start-up

    def load_and_warm(self) -> float:
        # OpenMP settings are per thread: without this, a worker thread started from a thread
        # other than the main one can run its kernels ~40% slower (measured on the 2-core CPU).
        threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self.generator = load_pack(self.config)  # kept by an earlier start: no diffusers to import
        if self.generator is None:
            # Imported here, not with the engine: diffusers takes seconds to import, which the server's
            # start and the speech model's warm-up spend meanwhile.
            with LIBRARY_LOADS:
                from livegen.models.loader import load_generator

                self.generator = load_generator(self.config)
        self.encode_prompt = lru_cache(maxsize=self.settings.prompt_cache_size)(self.generator.encode_prompt)
        self.safety = SafetyStages(self.settings.safety, self.generator, self._frame_numbers, self.encode_prompt)
        self.make_noise = lru_cache(maxsize=NOISE_CACHE_SIZE)(self.generator.make_noise)
        started = time.perf_counter()
        speech = self._speech_warm
        if self.on_cpu and threads > 1 and speech is not None and not speech.is_set():
            # Speech loads on the same cores meanwhile, and OpenMP's idle threads spin against it (on 2
            # cores a whole start took 5.1-5.7 s at one thread, 7.0-7.4 s at two). So one thread until
            # speech is warm, then the threads frames run with: for the shapes left, and again for the
            # single frames warmed at one. A shape's kernels, built at one thread, serve any count: every
            # shape's first frame at two threads took 1.1-1.5x a later pass in all, a shape never run 4-9x.
            slowest, single_frames_at_one = 0.0, []
            for shape in self.warm_shapes():
                one_thread = not speech.is_set()
                torch.set_num_threads(1 if one_thread else threads)
                slowest = max(slowest, self._warm_up(shape))
                if one_thread and shape[1] == 1:
                    single_frames_at_one.append(shape)
            speech.wait()
            torch.set_num_threads(threads)
            for shape in single_frames_at_one:
                self._warm_up(shape)
        else:
            slowest = max(self._warm_up(shape) for shape in self.warm_shapes())
        self.generator.warmed()
        keep_pack(self.generator, self.config)
        log.info("%s warm in %.1fs (%s)", self.name, time.perf_counter() - started,
                 self.generator.describe_acceleration())
        return slowest

    def _warm_up(self, shape: tuple[BatchSpec, int]) -> float:
        """Real generations at `shape`; the slowest, in seconds."""
        spec, batch = shape
        image = np.full((spec.height, spec.width, 3), 127, np.uint8) if spec.strength else None
        tasks = [ImageTask(id="warmup", runner=self, owner=UNOWNED, received_at=time.perf_counter(), spec=spec,
                           seed=i, image=image, request=Generate(id="warmup", prompt=f"warm-up {i}"))
                 for i in range(batch)]
        slowest = 0.0
        for _ in range(self.settings.warmup_runs if batch == 1 else 1):
            computed = time.perf_counter()
            self._compute(tasks)
            slowest = max(slowest, time.perf_counter() - computed)
        return slowest

    def warm_shapes(self) -> list[tuple[BatchSpec, int]]:
        """Every shape real inputs can have: each served size, image- and text-to-image, guidance on
        and off (classifier-free guidance doubles the batch), at every batch size up to a full one.
        A shape met first after ready cost seconds on the CPU, where each new shape builds its
        convolution kernels, and recompiles under --compile. The most common first input (one
        text-to-image frame at the default guidance) comes last, so it finds its kernels chosen."""
        assert self.generator is not None
        return [(BatchSpec(width, height, 1, guidance, strength), batch)
                for width, height in self.generator.description.sizes
                for batch in range(self.settings.max_batch, 0, -1)
                for guidance in self.generator.warm_guidances()
                for strength in (0.5, None)]

    # ------------------------------------------------------------------ batch formation

    def wake(self, slot: Slot) -> None:
        self._slots.add(slot)
        self._wake.set()

    def in_hand(self) -> list[Task]:
        return list(self._in_hand)

    def drain(self, code: str, message: str) -> None:
        for slot in self._slots:
            if slot.pending is not None and slot.pending.runner is self:
                slot.drop_pending(code, message)

    def _eligible(self) -> list[ImageTask]:
        for slot in [s for s in self._slots if s.closed]:
            self._slots.discard(slot)
        tasks = [s.pending for s in self._slots if s.eligible and s.pending.runner is self]
        self.metrics.queue_depth.labels(self.name).set(len(tasks))
        return sorted(tasks, key=lambda t: t.received_at)  # type: ignore[arg-type]

    def _others_may_join(self, group: list[ImageTask]) -> bool:
        now = time.perf_counter()
        in_group = {task.owner for task in group}
        return any(
            s not in in_group and not s.closed and now - s.last_input_at < ACTIVE_WINDOW_S
            for s in self._slots
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
            return [task.owner.take() for task in group]  # type: ignore[attr-defined]

    async def serve(self) -> None:
        while True:
            self._in_hand = []
            group = self._in_hand = await self._next_batch()
            try:
                async with self.turn():
                    started = time.perf_counter()  # a wait for the CPU's turn counts as queueing
                    for task in group:
                        task.timings["queue_ms"] = (started - task.received_at) * 1000
                    outcomes = await self.compute(self._compute, group)
            except ComputeTimeout as timeout:
                for task in group:
                    task.owner.answer(task, timeout_error(task, timeout))
                self.drain("not_ready", f"{self.name} is recovering from a stalled computation; send again later")
                await self.recover()
                continue
            except Exception as exc:  # one bad batch must not stop the runner
                self.metrics.errors.labels("internal").inc(len(group))
                self.fail(group, exc, "a batch failed")
                continue
            if outcomes is None:  # every session in the batch left while it ran
                self.metrics.cancelled.labels(self.name).inc(len(group))
                continue
            self.metrics.batch_size.labels(self.name).observe(len(group))
            for task, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Frame):
                    self._record(outcome)
                else:
                    self.metrics.blocked.labels(outcome.stage, outcome.category).inc()
                task.owner.answer(task, outcome)

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
        prompts, drawn = [], []
        for task in tasks:
            started = time.perf_counter()
            request = task.request
            embedding = self._embed(request.prompt)
            drawn.append(embedding.drawn)
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
            return all(task.owner.closed for task in tasks)

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
        for task, image, flag, text in zip(tasks, pixels, flags, drawn, strict=True):
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
                timings={k: round(v, 3) for k, v in task.timings.items()}, drawn=text,
            ))
        return frames
