"""livegen on Ray Serve (issue 22): a local Ray on loopback, two warm replicas of the embedded model
behind Serve's HAProxy ingress, driven by the Python client; replicas drained and killed mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import yaml
from PIL import Image
from ray import serve

from typer.testing import CliRunner

from livegen.cli import app
from livegen.client import AsyncClient
from livegen.config import ModelConfig, ModelDeployment, Settings, embedded_model
from livegen.models.embedded import EMBEDDED_MODEL, EMBEDDED_SOURCE
from livegen.models.sources import resolve_source
from livegen.protocol import Exported, Frame
from livegen.rayserve.application import cluster as ray_cluster
from livegen.rayserve.application import deployment_options, haproxy_servers, replicas, routed, serve_config
from livegen.rayserve.application import deploy as apply
from livegen.rayserve.replica import replica_settings
from livegen.safety import watermark
from livegen.safety.provenance import ProvenanceError, load_provenance, read_manifest
from livegen.server.background import free_port

pytestmark = pytest.mark.timeout(600)


def settings(keys, replicas: int, port: int = 8000) -> Settings:
    base = Settings(models=[embedded_model()], speech=None, max_batch=4, batch_wait_ms=20, port=port)
    return base.model_copy(update={
        "safety": base.safety.model_copy(update={"keys": keys}),
        "ray": base.ray.model_copy(update={"min_replicas": replicas, "max_replicas": replicas, "drain_poll_s": 0.1,
                                           "graceful_shutdown_s": 30}),
    })


@dataclass
class Cluster:
    keys: Path
    port: int
    metrics: str
    stats: str  # HAProxy's

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def deploy(self, replicas: int) -> None:
        apply(settings(self.keys, replicas, self.port))
        routed(self.stats, replicas)


def scaled_to(cluster: Cluster, count: int) -> None:
    """Redeploy with `count` replicas and wait until the others are gone, not just stopping."""
    cluster.deploy(count)
    deadline = time.monotonic() + 60
    while [r["state"] for r in replicas()] != ["RUNNING"] * count:
        assert time.monotonic() < deadline, replicas()
        time.sleep(0.1)


def tag(frame: Frame) -> int:
    """Which replica drew the frame: the server tag its watermark carries."""
    reading = watermark.read(np.array(Image.open(io.BytesIO(frame.image)).convert("RGB")))
    assert reading.payload is not None
    return reading.payload.server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    keys = tmp_path_factory.mktemp("ray-keys")
    load_provenance(keys)  # one chain for every replica, made once here
    port, metrics_port, stats_port = free_port(), free_port(), free_port()
    env = {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port())}
    with ray_cluster(Settings().ray, env, num_cpus=6, include_dashboard=False, log_to_driver=False,
                     _metrics_export_port=metrics_port):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cluster = Cluster(keys, port, f"http://127.0.0.1:{metrics_port}/metrics",
                          f"http://127.0.0.1:{stats_port}/stats;csv")
        cluster.deploy(2)
        yield cluster


class Stream:
    """One session generating frame after frame until told to stop; every input's frame is kept."""

    def __init__(self, url: str, index: int):
        self.url, self.index, self.frames, self.times = url, index, [], []
        self.stop = asyncio.Event()
        self.exported: Exported | None = None

    async def run(self) -> None:
        async with AsyncClient(self.url) as client:
            n = 0
            while not self.stop.is_set():
                frame = await client.generate(f"a smiling cat {self.index}", seed=n, format="png")
                self.frames.append(frame)
                self.times.append(time.monotonic())
                n += 1
            self.exported = await client.export(self.frames[-1].id)  # on the replica the session ends on


async def streaming(url: str, sessions: int, during) -> list[Stream]:
    """Run `during()` (in a thread) while `sessions` sessions stream; every one has made frames before."""
    streams = [Stream(url, i) for i in range(sessions)]
    tasks = [asyncio.create_task(s.run()) for s in streams]
    while any(len(s.frames) < 2 for s in streams):
        await asyncio.sleep(0.05)
        for task in tasks:
            if task.done():
                task.result()
    await asyncio.to_thread(during)
    before = [len(s.frames) for s in streams]
    while any(len(s.frames) < b + 3 for s, b in zip(streams, before, strict=True)):
        await asyncio.sleep(0.05)
        for task in tasks:
            if task.done():
                task.result()
    for s in streams:
        s.stop.set()
    await asyncio.gather(*tasks)
    return streams


async def test_sessions_spread_over_two_warm_replicas_with_their_own_tags(cluster):
    url, http = cluster.url, cluster.http
    assert [r["state"] for r in replicas()] == ["RUNNING", "RUNNING"]
    assert httpx.get(f"{http}/readyz").status_code == 200
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(AsyncClient(url)) for _ in range(8)]
        frames = await asyncio.gather(*(c.generate("a smiling cat", seed=i, format="png")
                                        for i, c in enumerate(clients)))
        assert all(c.hello.ready for c in clients)
    assert len({tag(f) for f in frames}) == 2  # both replicas served, each with its own watermark tag


def sessions_by_server(stats: str) -> dict[str, int]:
    """Connections each server of HAProxy's livegen backend has taken: replicas, and Serve's proxy as fallback."""
    return {row["svname"]: int(row["stot"]) for row in haproxy_servers(stats)}


async def test_haproxy_takes_sessions_straight_to_the_replicas(cluster):
    before = sessions_by_server(cluster.stats)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            client = await stack.enter_async_context(AsyncClient(cluster.url))
            await client.generate("a smiling cat")
    after = sessions_by_server(cluster.stats)
    added = {name: after[name] - before.get(name, 0) for name in after}
    assert sum(n for name, n in added.items() if name.startswith("SERVE_REPLICA")) == 4, added
    assert all(n == 0 for name, n in added.items() if not name.startswith("SERVE_REPLICA")), added


async def test_each_replica_s_metrics_are_scraped_from_ray_with_its_replica_tag(cluster):
    url, metrics = cluster.url, cluster.metrics
    async with AsyncClient(url) as client:
        await client.generate("a smiling cat", format="png")
    deadline = time.monotonic() + 90
    while True:
        frames = [line for line in httpx.get(metrics).text.splitlines() if line.startswith("ray_livegen_frames_total{")]
        if frames or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert frames, "no livegen metrics in Ray's export"
    running = {r["replica_id"] for r in replicas()}
    assert all('replica="' in line for line in frames)
    assert {line.split('replica="')[1].split('"')[0].split("#")[-1] for line in frames} <= running


async def test_latest_wins_and_micro_batching_hold_per_replica(cluster):
    url = cluster.url
    async with AsyncClient(url) as client:
        ids = [await client.send("a smiling cat", seed=i, format="png") for i in range(12)]
        outcomes = {}
        while ids[-1] not in outcomes:
            outcome = await client.receive()
            assert outcome.id not in outcomes  # one outcome per input
            outcomes[outcome.id] = outcome
    assert isinstance(outcomes[ids[-1]], Frame)  # the newest input always gets its frame
    assert any(o.type == "superseded" for o in outcomes.values())  # stale ones were dropped
    streams = await streaming(url, 8, lambda: None)
    assert max(f.batch_size for s in streams for f in s.frames) > 1  # sessions on one replica share passes


async def test_a_drained_replica_moves_its_sessions_and_a_new_one_is_warm_first(cluster):
    url = cluster.url
    started = time.monotonic()
    streams = await streaming(url, 6, lambda: scaled_to(cluster, 1))
    # Drained, not killed: Serve would have waited out graceful_shutdown_s (30 s) for the open sockets.
    assert time.monotonic() - started < settings(cluster.keys, 1).ray.graceful_shutdown_s
    last = {tag(s.frames[-1]) for s in streams}
    assert len(last) == 1  # every session ends on the replica that stayed
    moved = [s for s in streams if tag(s.frames[0]) not in last]
    assert moved  # and some started on the one that was drained, and kept generating without user code
    for s in moved:  # a moved session's new frames export, signed with the chain every replica shares
        report = read_manifest(s.exported.image, "image/png", cluster.keys / "root.pem")
        assert report.valid and report.trusted
    # Scaling back up: a replica still warming takes no session (each one below says ready).
    ready = []

    async def open_sessions() -> None:
        while len(replicas()) < 2 or any(r["state"] != "RUNNING" for r in replicas()):
            async with AsyncClient(url) as client:
                await client.generate("a smiling cat", format="png")
                ready.append(client.hello.ready)

    await asyncio.gather(asyncio.to_thread(scaled_to, cluster, 2), open_sessions())
    assert ready and all(ready)


async def test_a_killed_replica_s_sessions_reconnect_to_the_other(cluster):
    url = cluster.url
    assert len(replicas()) == 2

    def kill_one() -> None:
        victim = replicas()[0]
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)

    streams = await streaming(url, 6, kill_one)
    for s in streams:  # every input of every session got its frame, before and after the kill
        assert all(isinstance(f, Frame) for f in s.frames)
    assert len({tag(s.frames[-1]) for s in streams}) >= 1


async def test_a_model_in_a_deployment_of_its_own_is_chosen_by_the_model_field(cluster, tiny_sd):
    """The ingress replica holds the session and the embedded model; the tiny model lives only in its
    own deployment, and a message naming it is drawn there, on the same socket."""
    base = settings(cluster.keys, 1, cluster.port)
    tiny = ModelConfig(source=str(tiny_sd), name="tiny", sizes=[(64, 64)], deployment=ModelDeployment(replicas=1))
    apply(base.model_copy(update={"models": [*base.models, tiny]}))
    deployments = serve.status().applications["livegen"].deployments
    assert {name: d.status for name, d in deployments.items()} == {"livegen": "HEALTHY", "model-tiny": "HEALTHY"}
    async with AsyncClient(cluster.url) as client:
        assert [m.name for m in client.hello.models] == ["emoji", "tiny"]
        emoji = await client.generate("a smiling cat", format="png")
        drawn = await client.generate("a smiling cat", model="tiny", format="png")
        exported = await client.export(drawn.id)  # signed by the replica that holds the session
    assert (emoji.model, drawn.model, drawn.width) == ("emoji", "tiny", 64)
    assert tag(drawn) != tag(emoji), "the tiny model's frame was drawn in the ingress replica"
    assert "remote_ms" in drawn.timings and "queue_ms" in drawn.timings
    report = read_manifest(exported.image, "image/png", cluster.keys / "root.pem")
    assert report.valid and report.trusted and report.generation["model"] == "tiny"
    readiness = httpx.get(f"{cluster.http}/readyz").json()
    assert readiness["acceleration"]["tiny"]["mode"] == "a deployment of its own"


def running() -> int:
    return sum(r["state"] == "RUNNING" for r in replicas())


async def until(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"{what}: {replicas()}"
        await asyncio.sleep(0.2)


async def test_open_sessions_scale_the_replicas_up_and_back_down(cluster):
    """Serve's autoscaler on open sessions (one per replica here): a second replica once sessions
    outnumber the first, new sessions on it, and back to one when they close."""
    autoscaled = settings(cluster.keys, 1, cluster.port)
    autoscaled.ray = autoscaled.ray.model_copy(update={"max_replicas": 2, "target_sessions": 1, "autoscaling": {
        "upscale_delay_s": 0, "downscale_delay_s": 1, "look_back_period_s": 1}})
    try:
        await asyncio.to_thread(apply, autoscaled)
        await until(lambda: running() == 1 and len(replicas()) == 1, "one replica without sessions")
        first = [Stream(cluster.url, i) for i in range(3)]
        tasks = [asyncio.create_task(s.run()) for s in first]
        await until(lambda: running() == 2, "a second replica for three sessions")
        await asyncio.to_thread(routed, cluster.stats, 2)
        later = [Stream(cluster.url, i) for i in range(3, 5)]  # the new replica has none: they go there
        tasks += [asyncio.create_task(s.run()) for s in later]
        while any(len(s.frames) < 3 for s in first + later):
            await asyncio.sleep(0.05)
            for task in tasks:
                if task.done():
                    task.result()
        assert len({tag(s.frames[-1]) for s in first + later}) == 2
        for s in first + later:
            s.stop.set()
        await asyncio.gather(*tasks)
        await until(lambda: len(replicas()) == 1, "back to one replica once the sessions closed")
    finally:
        await asyncio.to_thread(scaled_to, cluster, 2)


def test_replicas_refuse_to_make_their_own_signing_chain(tmp_path):
    with pytest.raises(ProvenanceError, match="every replica signs with the same one"):
        replica_settings(settings(tmp_path / "empty", 1), "r1")
    load_provenance(tmp_path / "keys")
    a, b = (replica_settings(settings(tmp_path / "keys", 1), r) for r in ("r1", "r2"))
    assert watermark.server_tag(a.safety.server_id) != watermark.server_tag(b.safety.server_id)


def test_serve_config_names_the_builder_and_round_trips_the_settings(tmp_path):
    s = settings(tmp_path, 3)
    config = serve_config(s)
    app = config["applications"][0]
    assert app["import_path"] == "livegen.rayserve.application:build"
    assert app["args"]["models"][0]["source"] == EMBEDDED_SOURCE  # not this machine's path to it
    assert "min_replicas" not in app["args"]["ray"]  # scaling is the deployment's: a rescale keeps replicas
    assert app["deployments"] == [deployment_options(s)]
    read = Settings.model_validate(app["args"])
    assert read.model_copy(update={"models": s.models, "ray": s.ray}) == s
    assert resolve_source(read.models[0].source) == EMBEDDED_MODEL


def test_a_model_with_a_deployment_of_its_own_gets_its_resources_in_the_config(tmp_path):
    s = settings(tmp_path, 2)
    big = ModelConfig(source=str(tmp_path), name="big", deployment=ModelDeployment(replicas=3, cpus=4, gpus=1))
    s = s.model_copy(update={"models": [*s.models, big]})
    names = [(d["name"], d.get("num_replicas"), d["ray_actor_options"]) for d in serve_config(s)["applications"][0]["deployments"]]
    assert names == [("livegen", 2, {"num_cpus": 1, "num_gpus": 0}), ("model-big", 3, {"num_cpus": 4, "num_gpus": 1})]
    scaled = ModelConfig(source=str(tmp_path), name="big", deployment=ModelDeployment(replicas=1, max_replicas=4))
    [_, model] = serve_config(s.model_copy(update={"models": [s.models[0], scaled]}))["applications"][0]["deployments"]
    assert model["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1}
    with pytest.raises(ValueError, match="below replicas"):
        ModelDeployment(replicas=3, max_replicas=2)


def test_ray_config_command_writes_a_serve_config(tmp_path):
    output = tmp_path / "serve.yaml"
    result = CliRunner().invoke(app, ["ray", "config", "-o", str(output), "--replicas", "2", "--max-replicas", "4"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(output.read_text())
    options = config["applications"][0]["deployments"][0]
    assert options["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 16}
    assert "ingress" not in config["applications"][0]["args"]["ray"]  # the cluster's: its nodes' environment
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in result.stderr  # what the nodes need, said where the config is made
    for how in (["--ray-ingress", "proxy"], []):
        proxy = CliRunner().invoke(app, ["ray", "config", "-o", str(output), *how], env={"LIVEGEN_RAY__INGRESS": "proxy"})
        assert proxy.exit_code == 0 and "RAY_SERVE" not in proxy.stderr
    unknown = CliRunner().invoke(app, ["ray", "config", "--ray-ingress", "nginx"])
    assert unknown.exit_code == 2 and "haproxy" in unknown.output
    bad = CliRunner().invoke(app, ["ray", "config", "--replicas", "3", "--max-replicas", "2"])
    assert bad.exit_code == 2 and "exceeds max_replicas" in bad.output


def test_scale_to_zero_is_allowed_with_a_warning(tmp_path, caplog):
    s = settings(tmp_path, 1)
    s.ray = s.ray.model_copy(update={"min_replicas": 0, "max_replicas": 2})
    assert deployment_options(s)["autoscaling_config"]["min_replicas"] == 0
    assert "cold start" in caplog.text


def test_waiting_for_haproxy_names_what_it_routes_to_when_time_runs_out():
    with pytest.raises(TimeoutError, match="HAProxy routes to 0 replicas, not 2"):
        routed(f"http://127.0.0.1:{free_port()}/stats;csv", 2, timeout_s=0.3)  # nothing listens: not yet started


def test_free_ports_come_from_outside_the_ranges_other_processes_are_handed():
    """Not the kernel's ephemeral ports (any port-0 bind, such as the processes Ray starts) nor Ray's worker ports."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(20):
        port = free_port()
        assert 19999 < port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # and free
