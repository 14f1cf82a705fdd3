"""One replica of a model served in a deployment of its own: the model warm, computing the batches
the ingress replicas send it (engine/remote_runner.py).

Its engine holds this one model and no speech; its frames carry its own watermark tag and come
back to the ingress replica that holds the session, which exports and signs them there.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from livegen.config import Settings
from livegen.engine import Engine
from livegen.engine.remote_runner import RemoteDescription, RemoteInput, compute_here
from livegen.protocol import Blocked, Frame
from livegen.rayserve.replica import replica_settings

log = logging.getLogger(__name__)


class ModelReplica:
    async def __init__(self, settings: dict, model: str):
        replica = serve.get_replica_context().replica_id.unique_id
        everything = replica_settings(Settings.model_validate(settings), replica)
        config = next(c for c in everything.models if c.display_name == model)
        self.engine = Engine(everything.model_copy(update={"models": [config], "speech": None}))
        await self.engine.start()
        self.runner = self.engine.runners[model]
        log.info("model %s warm in replica %s", model, replica)

    def describe(self) -> RemoteDescription:
        generator = self.runner.generator
        assert generator is not None and self.runner.deadline_s is not None
        return RemoteDescription(generator.description, generator.describe_acceleration(), self.runner.deadline_s)

    async def compute(self, batch: list[RemoteInput]) -> list[Frame | Blocked]:
        # On the runner's own thread, where its warm-up ran (and its CUDA graphs were captured).
        return await asyncio.get_running_loop().run_in_executor(self.runner._executor, compute_here, self.runner, batch)

    async def check_health(self) -> None:
        if reasons := self.engine.unready_reasons():
            raise RuntimeError(f"model replica is not ready: {reasons}")
