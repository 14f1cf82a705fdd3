"""The Serve application for a livegen Settings: replicas, resources, autoscaling on open sessions.

`application(settings)` is what `livegen serve --ray` runs; `build(args)` is the import path a
`serve deploy` config names, and `serve_config(settings)` writes that config.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve import Application

from livegen.config import Settings
from livegen.rayserve.replica import LivegenReplica

log = logging.getLogger(__name__)

DEPLOYMENT = "livegen"
HTTP_HEADROOM = 16  # requests beside the sessions a replica takes: health, tokens, one-shot generate


def deployment_options(settings: Settings) -> dict[str, Any]:
    ray = settings.ray
    if ray.min_replicas == 0:
        log.warning("min_replicas is 0: Serve may stop every replica, and the next session waits for a cold "
                    "start (load and warm-up) that livegen exists to remove")
    scaling: dict[str, Any] = {"num_replicas": ray.min_replicas}
    if ray.max_replicas > ray.min_replicas:
        scaling = {"autoscaling_config": {"min_replicas": ray.min_replicas, "max_replicas": ray.max_replicas,
                                          "target_ongoing_requests": ray.target_sessions}}
    return {
        "name": DEPLOYMENT,
        **scaling,
        # An open WebSocket is one request in flight for as long as it stays open.
        "max_ongoing_requests": settings.max_sessions + HTTP_HEADROOM,
        "ray_actor_options": {"num_cpus": ray.cpus, "num_gpus": ray.gpus},
        "health_check_period_s": ray.health_check_period_s,
        "graceful_shutdown_timeout_s": ray.graceful_shutdown_s,
    }


def application(settings: Settings) -> Application:
    return serve.deployment(LivegenReplica).options(**deployment_options(settings)).bind(
        settings.model_dump(mode="json"))


def build(args: dict[str, Any]) -> Application:
    """The builder a Serve config's `import_path` names: `args` are livegen Settings as JSON."""
    return application(Settings.model_validate(args))


def serve_config(settings: Settings) -> dict[str, Any]:
    """A `serve deploy` / RayService config running these settings (docs/deploying.md)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [{
            "name": "livegen",
            "route_prefix": "/",
            "import_path": f"{__name__}:build",
            "args": settings.model_dump(mode="json"),
        }],
    }
