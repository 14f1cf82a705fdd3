"""livegen on Ray Serve with `ingress: proxy`: Serve's Python proxy takes the sessions (no HAProxy),
and deleting the application, as `livegen serve --ray` does on Ctrl+C, drains the replica's sessions."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from ray import serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from livegen.config import RayConfig, Settings, embedded_model
from livegen.rayserve.application import APP, cluster, cluster_env
from livegen.rayserve.application import deploy as apply
from livegen.safety.provenance import load_provenance
from livegen.server.background import free_port

pytestmark = pytest.mark.timeout(300)


def test_serve_s_python_proxy_serves_and_a_deleted_application_drains(tmp_path):
    ray_config = RayConfig(ingress="proxy", drain_poll_s=0.1)
    assert cluster_env(ray_config) == {}  # Serve's default ingress: nothing for the nodes to set
    port, stats = free_port(), free_port()
    base = Settings(models=[embedded_model()], speech=None, port=port, ray=ray_config)
    settings = base.model_copy(update={"safety": base.safety.model_copy(update={"keys": tmp_path})})
    load_provenance(tmp_path)
    with cluster(ray_config, {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats)}, num_cpus=4, include_dashboard=False,
                 log_to_driver=False):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        apply(settings)
        with pytest.raises(httpx.ConnectError):  # no HAProxy: the port it would serve its statistics on is shut
            httpx.get(f"http://127.0.0.1:{stats}/stats;csv")
        with connect(f"ws://127.0.0.1:{port}/v1/stream?codec=json", max_size=2**24) as ws:
            assert json.loads(ws.recv())["ready"] is True
            ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "a smiling cat"}))
            assert json.loads(ws.recv())["type"] == "frame"
            deleted = time.monotonic()
            serve.delete(APP, _blocking=False)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001  # drained, not killed
        assert time.monotonic() - deleted < settings.ray.graceful_shutdown_s
