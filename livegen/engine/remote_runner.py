"""An image model computed in another process (on Ray Serve, a deployment of its own).

The runner forms batches here as ImageRunner does (latest input wins, sessions share batches);
instead of computing a batch it hands it to a `RemoteModel` and waits on its own thread for the
outcomes. Moderation, the output check and the watermark run where the model runs, as they would
beside it; sessions, exports and signatures stay here. The model warmed itself before it took
work, so this runner is warm once the model describes itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from livegen.config import ModelConfig, Settings
from livegen.engine.image_runner import UNOWNED, ImageRunner, ImageTask
from livegen.engine.metrics import EngineMetrics
from livegen.models.base import BatchSpec, ModelDescription
from livegen.protocol import Blocked, Frame, Generate


@dataclass(frozen=True)
class RemoteInput:
    """One input of a batch, as the model's process needs it."""

    id: str
    request: Generate
    spec: BatchSpec
    seed: int
    image: np.ndarray | None


@dataclass(frozen=True)
class RemoteDescription:
    description: ModelDescription
    acceleration: dict[str, Any]
    deadline_s: float  # the model's own hang deadline, from its warm-up


class RemoteModel(Protocol):
    def describe(self) -> RemoteDescription: ...

    def compute(self, batch: list[RemoteInput]) -> list[Frame | Blocked]:
        """(runner thread) One outcome per input, in order."""


class _Described:
    """What the engine reads of a generator (hello, admission, /readyz) for a model computed elsewhere."""

    def __init__(self, remote: RemoteDescription):
        self.description = remote.description
        self._acceleration = remote.acceleration

    def describe_acceleration(self) -> dict:
        return {"mode": "a deployment of its own", "there": self._acceleration}


class RemoteImageRunner(ImageRunner):
    def __init__(self, config: ModelConfig, settings: Settings, metrics: EngineMetrics, model: RemoteModel):
        super().__init__(config, settings, metrics, frame_numbers=iter(()))  # frames are numbered where drawn
        self.model = model

    @property
    def on_cpu(self) -> bool:
        return False  # it takes no turn on this process's cores

    def load_and_warm(self) -> float:
        remote = self.model.describe()
        self.generator = _Described(remote)  # type: ignore[assignment]
        self.deadline_s = self.deadline_s or 2 * remote.deadline_s  # its own, and the way there and back
        return 0.0

    def _compute(self, tasks: list[ImageTask]) -> list[Frame | Blocked] | None:  # type: ignore[override]
        started = time.perf_counter()
        outcomes = self.model.compute([RemoteInput(t.id, t.request, t.spec, t.seed, t.image) for t in tasks])
        now = time.perf_counter()
        # The stages are timed there; the queue here, and the whole frame here, round trip included.
        here = {"remote_ms": (now - started) * 1000}
        return [outcome.model_copy(update={"timings": {
                    **outcome.timings, **{k: round(v, 3) for k, v in {**task.timings, **here}.items()},
                    "total_ms": round((now - task.received_at) * 1000, 3)}})
                if isinstance(outcome, Frame) else outcome
                for task, outcome in zip(tasks, outcomes, strict=True)]


def compute_here(runner: ImageRunner, batch: list[RemoteInput]) -> list[Frame | Blocked]:
    """(runner thread) The model's side: a batch sent by a RemoteImageRunner, computed by a warm runner."""
    received = time.perf_counter()
    tasks = [ImageTask(id=item.id, runner=runner, owner=UNOWNED, received_at=received, spec=item.spec,
                       seed=item.seed, image=item.image, request=item.request) for item in batch]
    outcomes = runner._compute(tasks)
    if outcomes is None:  # nobody here stops a batch, so it always completes
        raise RuntimeError("a remote batch was stopped")
    return outcomes
