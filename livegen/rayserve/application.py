"""The Serve application for a livegen Settings: replicas, resources, autoscaling on open sessions.

`serve_config(settings)` is the `serve deploy` config for a Settings: its import path names
`build(args)`. `livegen serve --ray` applies it to a local or named cluster with `deploy`.
The ingress (Serve's HAProxy or its Python proxy) is the cluster's, set in its nodes' environment
when they start (`cluster_env`), not in the config.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve import Application
from ray.serve._private.constants import RAY_SERVE_HAPROXY_STATS_PORT

from livegen.config import RayConfig, Settings
from livegen.models.embedded import EMBEDDED_MODEL, EMBEDDED_SOURCE
from livegen.rayserve.model import ModelReplica
from livegen.rayserve.replica import LivegenReplica
from livegen.safety.provenance import load_provenance

log = logging.getLogger(__name__)

APP = "livegen"
DEPLOYMENT = "livegen"
HTTP_HEADROOM = 16  # requests beside the sessions a replica takes: health, tokens, one-shot generate


def scaling(least: int, most: int, target: float, more: dict[str, float]) -> dict[str, Any]:
    """A fixed replica count, or Serve's autoscaling between `least` and `most` on `target` requests
    in flight per replica, with `more` of its options (delays, windows)."""
    if most <= least:
        return {"num_replicas": least}
    return {"autoscaling_config": {**more, "min_replicas": least, "max_replicas": most,
                                   "target_ongoing_requests": target}}


def deployment_options(settings: Settings) -> dict[str, Any]:
    ray = settings.ray
    if ray.min_replicas == 0:
        log.warning("min_replicas is 0: Serve may stop every replica, and the next session waits for a cold "
                    "start (load and warm-up) that livegen exists to remove")
    return {
        "name": DEPLOYMENT,
        **scaling(ray.min_replicas, ray.max_replicas, ray.target_sessions, ray.autoscaling),
        # An open WebSocket is one request in flight for as long as it stays open.
        "max_ongoing_requests": settings.max_sessions + HTTP_HEADROOM,
        "ray_actor_options": {"num_cpus": ray.cpus, "num_gpus": ray.gpus},
        "health_check_period_s": ray.health_check_period_s,
        "graceful_shutdown_timeout_s": ray.graceful_shutdown_s,
    }


# Cluster and deployment options, not the replica's concern: left out of its arguments, so that
# changing them rescales the replicas Serve has instead of replacing every one (a new version of the arguments).
SCALING = {"ray": {"address", "ingress", "min_replicas", "max_replicas", "target_sessions", "autoscaling", "cpus",
                   "gpus"}}


def cluster_env(ray: RayConfig) -> dict[str, str]:
    """The environment every node of the cluster must start with (`ray start`; this process for a
    local cluster): Serve reads its ingress from it once, when it starts."""
    if ray.ingress == "proxy":
        return {}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1",
            # How long a stopped replica stays reachable, for the HAProxies to drop it, before it refuses
            # connections. Serve's 30 s is sized for outside load balancers; livegen drains the replica's
            # sessions as soon as it is stopped, and a session that lands there later is told to move on.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def model_deployments(settings: Settings) -> dict[str, dict[str, Any]]:
    """The options of each model served in a deployment of its own, by model name."""
    return {config.display_name: {
        "name": f"model-{config.display_name}",
        # A batch is one request; one in flight per replica keeps each busy without queueing behind another.
        **scaling(config.deployment.replicas, config.deployment.max_replicas or config.deployment.replicas, 1,
                  settings.ray.autoscaling),
        # A batch in flight per ingress replica, and one more queued behind it.
        "max_ongoing_requests": 2 * settings.ray.max_replicas,
        "ray_actor_options": {"num_cpus": config.deployment.cpus, "num_gpus": config.deployment.gpus},
        "health_check_period_s": settings.ray.health_check_period_s,
        "graceful_shutdown_timeout_s": settings.ray.graceful_shutdown_s,
    } for config in settings.models if config.deployment is not None}


def build(args: dict[str, Any]) -> Application:
    """The builder a Serve config's `import_path` names: `args` are livegen Settings as JSON, without
    the scaling options (the config's deployment section sets those). Each model with a deployment
    of its own is bound beside the ingress, which gets a handle to it."""
    settings = Settings.model_validate(args)
    models = {name: serve.deployment(ModelReplica).options(**options).bind(args, name)
              for name, options in model_deployments(settings).items()}
    return serve.deployment(LivegenReplica).options(**deployment_options(settings)).bind(args, models)


def serve_config(settings: Settings) -> dict[str, Any]:
    """A `serve deploy` / RayService config running these settings (docs/deploying.md).

    The replicas' arguments leave out the scaling options, which go in the deployment's section:
    Serve then applies a change of replica count to the replicas it has, where a change of
    arguments replaces every one. The embedded model is named as such, not by this machine's path
    to it; every other path must exist on every node.
    """
    args = settings.model_dump(mode="json", exclude=SCALING)
    for model in args["models"]:
        if Path(model["source"]) == EMBEDDED_MODEL:
            model["source"] = EMBEDDED_SOURCE
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [{
            "name": APP,
            "route_prefix": "/",
            "import_path": f"{__name__}:build",
            "args": args,
            "deployments": [deployment_options(settings), *model_deployments(settings).values()],
        }],
    }


def deploy(settings: Settings, timeout_s: float = 600) -> None:
    """Apply `serve_config(settings)` to the running Serve instance, as `serve deploy` does, and
    return once the application runs: every replica warm."""
    from ray.serve.schema import ServeDeploySchema

    serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate(serve_config(settings)))
    deadline = time.monotonic() + timeout_s
    while (status := serve.status().applications.get(APP)) is None or status.status != "RUNNING":
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"livegen on Ray Serve failed to deploy: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"livegen on Ray Serve not running after {timeout_s:g} s: {status}")
        time.sleep(0.1)


def haproxy_servers(stats_url: str) -> list[dict[str, str]]:
    """The servers of livegen's backend on the HAProxy whose stats page (CSV) this is: its replicas
    (`SERVE_REPLICA...`) and Serve's Python proxy as its fallback; none while HAProxy is starting."""
    try:
        text = httpx.get(stats_url).text
    except httpx.HTTPError:
        return []
    return [row for row in csv.DictReader(text.removeprefix("# ").splitlines())
            if row["pxname"] == f"http-{APP}" and row["svname"] != "BACKEND"]


def haproxy_replicas(stats_url: str) -> int:
    """How many replicas that HAProxy routes to: UP in its backend. Serve tells each node's HAProxy
    of a replica shortly after the replica runs; until then new sessions go to the replicas it
    knows, or through Serve's Python proxy when it knows none."""
    return sum(row["svname"].startswith("SERVE_REPLICA") and row["status"] == "UP"
               for row in haproxy_servers(stats_url))


def routed(stats_url: str, count: int, timeout_s: float = 60) -> None:
    """Wait until the HAProxy at `stats_url` routes to exactly `count` replicas."""
    deadline = time.monotonic() + timeout_s
    while (up := haproxy_replicas(stats_url)) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"HAProxy routes to {up} replicas, not {count}, after {timeout_s:g} s")
        time.sleep(0.1)


def replicas() -> list[dict[str, Any]]:
    """The deployment's replicas as Serve's controller reports them: id, state, actor name, ..."""
    details = serve.context._get_global_client().get_serve_details()
    return details["applications"][APP]["deployments"][DEPLOYMENT]["replicas"]


def node_env_hint(config: RayConfig) -> str | None:
    """What the nodes of a cluster started elsewhere need for `config.ingress`, if anything."""
    if env := cluster_env(config):
        return (f"Start every node of the Ray cluster with {' '.join(f'{k}={v}' for k, v in env.items())} for the "
                f"{config.ingress} ingress: Serve reads it when a node starts (docs/deploying.md)")
    return None


@contextlib.contextmanager
def cluster(config: RayConfig, env: dict[str, str] | None = None, **init: Any) -> Iterator[None]:
    """Ray at `config.address`, or a local cluster whose nodes start with `cluster_env` (and `env`,
    more of Serve's variables); Serve and Ray shut down on exit. `init`: more of ray.init's arguments."""
    saved = os.environ.copy()
    if config.address is None:
        os.environ.update({**cluster_env(config), **(env or {})})
    try:
        ray.init(address=config.address, **init)
    finally:  # the nodes have what they need; this process keeps its own environment
        os.environ.clear()
        os.environ.update(saved)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def run(settings: Settings) -> None:
    """`livegen serve --ray`: deploy on a Ray cluster (a local one if none is named), serve until
    SIGINT or SIGTERM, then delete the application, which drains every replica's sessions."""
    load_provenance(settings.safety.keys)  # the chain every replica signs with, made here if there is none
    with cluster(settings.ray):
        serve.start(http_options={"host": settings.host, "port": settings.port})
        deploy(settings)
        if settings.ray.address is None and settings.ray.ingress == "haproxy":
            routed(f"http://127.0.0.1:{RAY_SERVE_HAPROXY_STATS_PORT}/stats;csv", settings.ray.min_replicas)
        replicas = settings.ray.min_replicas if settings.ray.min_replicas == settings.ray.max_replicas else \
            f"{settings.ray.min_replicas}-{settings.ray.max_replicas}"
        print(f"livegen on Ray Serve: ws://{settings.host}:{settings.port}/v1/stream ({replicas} "
              f"replica{'' if replicas == 1 else 's'}, warm); "
              "Ctrl+C drains the sessions and stops", flush=True)
        if settings.ray.address is not None and (hint := node_env_hint(settings.ray)):
            print(hint, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        serve.delete(APP)
