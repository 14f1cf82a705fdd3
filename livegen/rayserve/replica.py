"""One Ray Serve replica: a whole livegen engine, warm before Ray routes to it, drained when Ray stops it.

Serve marks a replica running, and routes to it, only once its constructor returns, so the
constructor loads and warms every model. A WebSocket counts as a request in flight until it
closes, and Serve waits for those before it stops a replica, without telling the replica. So the
replica asks the controller whether it is being stopped, and then drains as `livegen serve` does
on SIGTERM: waiting inputs are answered `shutting_down`, running batches finish and go out, and
sockets close with 1001, on which the clients reconnect to another replica and resend.
A model configured with a deployment of its own (rayserve/model.py) is not loaded here: the
replica's engine sends that model's batches to its deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.context import ReplicaContext
from ray.serve.handle import DeploymentHandle

from livegen.config import Settings
from livegen.engine import Engine
from livegen.engine.remote_runner import RemoteDescription, RemoteInput
from livegen.protocol import Blocked, Frame
from livegen.rayserve.metrics import PERIOD_S, RayMirror
from livegen.safety.provenance import ProvenanceError, SigningKeys
from livegen.server.app import create_app

log = logging.getLogger(__name__)


def replica_settings(settings: Settings, replica: str) -> Settings:
    """This replica's settings: its own watermark tag, and the signing chain every replica shares."""
    keys = SigningKeys.in_directory(settings.safety.keys)
    if not (keys.cert_chain.is_file() and keys.private_key.is_file()):
        raise ProvenanceError(f"no signing chain in {settings.safety.keys} on {socket.gethostname()}: every "
                              "replica signs with the same one, so put it there on every node "
                              "(docs/deploying.md); a replica never makes its own")
    # The tag is a hash of server_id: with the replica in it, two replicas on one node differ.
    safety = settings.safety.model_copy(update={"server_id": f"{socket.gethostname()}/{replica}"})
    return settings.model_copy(update={"safety": safety})


async def stopping(context: ReplicaContext) -> bool:
    """Whether Serve's controller is stopping this replica (scale-down, redeploy, delete)."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    details = await controller.get_serve_instance_details.remote()
    application = details["applications"].get(context.app_name)
    if application is None or context.deployment not in application["deployments"]:
        return True  # deleted: its replicas are on their way out
    deployment = application["deployments"][context.deployment]
    return any(r["replica_id"] == context.replica_id.unique_id and r["state"] == "STOPPING"
               for r in deployment["replicas"])


class DeploymentModel:
    """A model's deployment (rayserve/model.py) as the engine's RemoteModel, called from the runner's thread."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    def describe(self) -> RemoteDescription:
        return self.handle.describe.remote().result()

    def compute(self, batch: list[RemoteInput]) -> list[Frame | Blocked]:
        return self.handle.compute.remote(batch).result()


@serve.ingress()
class LivegenReplica:
    async def __init__(self, settings: dict, models: dict[str, DeploymentHandle] | None = None):
        """`models`: handles to the deployments of the models served in deployments of their own."""
        self.context = serve.get_replica_context()
        self.replica = self.context.replica_id.unique_id
        self.settings = replica_settings(Settings.model_validate(settings), self.replica)
        self.engine = Engine(self.settings, {name: DeploymentModel(handle) for name, handle in (models or {}).items()})
        await self.engine.start()
        self._watch = asyncio.create_task(self._drain_when_stopped(), name="drain-when-stopped")
        self._mirror = asyncio.create_task(self._mirror_metrics(), name="mirror-metrics")
        log.info("replica %s warm (watermark server id %s)", self.replica, self.settings.safety.server_id)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.engine, start_engine=False)

    async def check_health(self) -> None:
        """Serve restarts a replica whose check fails: a model that died or stalled. A drain is not a failure."""
        if self.engine.draining:
            return
        if reasons := self.engine.unready_reasons():
            raise RuntimeError(f"livegen replica {self.replica} is not ready: {reasons}")

    async def _drain_when_stopped(self) -> None:
        period = self.settings.ray.drain_poll_s
        while not self.engine.draining:
            await asyncio.sleep(period)
            try:
                if await stopping(self.context):
                    log.info("replica %s is being stopped: draining", self.replica)
                    await self.engine.drain(self.settings.drain_seconds)
            except Exception:  # the controller restarting, say; ask again next period
                log.warning("replica %s could not ask the controller whether it is stopping", self.replica,
                            exc_info=True)

    async def _mirror_metrics(self) -> None:
        mirror = RayMirror(self.engine.metrics.registry)
        while True:
            mirror.copy()
            await asyncio.sleep(PERIOD_S)

    async def __del__(self) -> None:
        for task in (self._watch, self._mirror):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
