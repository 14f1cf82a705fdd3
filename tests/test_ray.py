"""livegen on Ray Serve (issue 22): a local Ray on loopback, two warm replicas of the embedded model
behind Serve's proxy, driven by the Python client; replicas drained and killed mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from ray import serve

from livegen.client import AsyncClient
from livegen.config import Settings, embedded_model
from livegen.protocol import Frame
from livegen.rayserve.application import DEPLOYMENT, application, serve_config
from livegen.rayserve.replica import replica_settings
from livegen.safety import watermark
from livegen.safety.provenance import ProvenanceError, load_provenance

APP = "livegen"
pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(keys, replicas: int) -> Settings:
    base = Settings(models=[embedded_model()], speech=None, max_batch=4, batch_wait_ms=20)
    return base.model_copy(update={
        "safety": base.safety.model_copy(update={"keys": keys}),
        "ray": base.ray.model_copy(update={"min_replicas": replicas, "max_replicas": replicas, "drain_poll_s": 0.1,
                                           "graceful_shutdown_s": 30}),
    })


def deploy(keys, replicas: int) -> None:
    serve.run(application(settings(keys, replicas)), name=APP, route_prefix="/")


def replicas() -> list[dict]:
    details = serve.context._get_global_client().get_serve_details()
    return details["applications"][APP]["deployments"][DEPLOYMENT]["replicas"]


def scaled_to(keys, count: int) -> None:
    """Redeploy with `count` replicas and wait until the others are gone, not just stopping."""
    deploy(keys, count)
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
    port = free_port()
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(keys, 2)
    yield keys, f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


class Stream:
    """One session generating frame after frame until told to stop; every input's frame is kept."""

    def __init__(self, url: str, index: int):
        self.url, self.index, self.frames, self.times = url, index, [], []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with AsyncClient(self.url) as client:
            n = 0
            while not self.stop.is_set():
                frame = await client.generate(f"a smiling cat {self.index}", seed=n, format="png")
                self.frames.append(frame)
                self.times.append(time.monotonic())
                n += 1


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
    _, url, http = cluster
    assert [r["state"] for r in replicas()] == ["RUNNING", "RUNNING"]
    assert httpx.get(f"{http}/readyz").status_code == 200
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(AsyncClient(url)) for _ in range(8)]
        frames = await asyncio.gather(*(c.generate("a smiling cat", seed=i, format="png")
                                        for i, c in enumerate(clients)))
        assert all(c.hello.ready for c in clients)
    assert len({tag(f) for f in frames}) == 2  # both replicas served, each with its own watermark tag


async def test_latest_wins_and_micro_batching_hold_per_replica(cluster):
    _, url, _ = cluster
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
    keys, url, _ = cluster
    started = time.monotonic()
    streams = await streaming(url, 6, lambda: scaled_to(keys, 1))
    # Drained, not killed: Serve would have waited out graceful_shutdown_s (30 s) for the open sockets.
    assert time.monotonic() - started < settings(keys, 1).ray.graceful_shutdown_s
    last = {tag(s.frames[-1]) for s in streams}
    assert len(last) == 1  # every session ends on the replica that stayed
    moved = [s for s in streams if tag(s.frames[0]) not in last]
    assert moved  # and some started on the one that was drained, and kept generating without user code
    # Scaling back up: a replica still warming takes no session (each one below says ready).
    ready = []

    async def open_sessions() -> None:
        while len(replicas()) < 2 or any(r["state"] != "RUNNING" for r in replicas()):
            async with AsyncClient(url) as client:
                await client.generate("a smiling cat", format="png")
                ready.append(client.hello.ready)

    await asyncio.gather(asyncio.to_thread(scaled_to, keys, 2), open_sessions())
    assert ready and all(ready)


async def test_a_killed_replica_s_sessions_reconnect_to_the_other(cluster):
    _, url, _ = cluster
    assert len(replicas()) == 2

    def kill_one() -> None:
        victim = replicas()[0]
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)

    streams = await streaming(url, 6, kill_one)
    for s in streams:  # every input of every session got its frame, before and after the kill
        assert all(isinstance(f, Frame) for f in s.frames)
    assert len({tag(s.frames[-1]) for s in streams}) >= 1


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
    assert Settings.model_validate(app["args"]) == s
