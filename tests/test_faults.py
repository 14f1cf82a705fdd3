"""Faults injected into a real server: a model that raises or hangs, a runner loop cancelled, clients
that vanish, a SIGTERM mid-stream. After each, every accepted input has exactly one outcome,
/readyz tells the truth, and service comes back without a restart."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from livegen.server.background import BackgroundServer, ServeProcess, free_port
from tests.conftest import server_settings

FINAL = {"frame", "superseded", "skipped", "blocked", "exported", "error", "speech_end", "cancelled"}


@pytest.fixture(scope="module")
def live(tiny_sd):
    server = BackgroundServer(server_settings(tiny_sd, batch_wait_ms=0))
    yield server
    server.stop()


@pytest.fixture
def runner(live):
    """The tiny model's runner, its generator restored after the test."""
    runner = live.engine.runners["tiny"]
    denoise, deadline_s = runner.generator.denoise, runner.deadline_s
    yield runner
    runner.generator.denoise, runner.deadline_s = denoise, deadline_s
    live.wait_for("/readyz", 10)


class Stream:
    """A JSON WebSocket client that counts the final outcomes each id gets."""

    def __init__(self, url: str):
        self.ws = connect(url + "/v1/stream?codec=json", max_size=None)
        self.hello = json.loads(self.ws.recv(10))
        self.finals: Counter[str] = Counter()

    def generate(self, id: str, **fields) -> None:
        self.ws.send(json.dumps({"type": "generate", "id": id, "prompt": fields.pop("prompt", "a fox"), **fields}))

    def next(self, timeout: float = 30) -> dict:
        message = json.loads(self.ws.recv(timeout))
        if message["type"] in FINAL and message.get("id") is not None:
            self.finals[message["id"]] += 1
        return message

    def until(self, id: str, timeout: float = 30) -> dict:
        while (message := self.next(timeout))["id"] != id or message["type"] not in FINAL:
            pass
        return message

    def close(self) -> None:
        self.ws.close()


def serves_again(live, stream: Stream, release: threading.Event) -> None:
    """Once the stalled computation is let go, /readyz turns 200 and the next input gets its frame."""
    release.set()
    live.wait_for("/readyz", 10)
    stream.generate("after")
    assert stream.until("after")["type"] == "frame"


def readyz(live) -> httpx.Response:
    return httpx.get(live.url + "/readyz")


def wait_until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_model_that_raises_fails_only_its_batch_with_an_incident_the_log_names(live, runner, caplog):
    calls = 0
    denoise = runner.generator.denoise

    def raises_on_second(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return denoise(*args, **kwargs)

    runner.generator.denoise = raises_on_second
    stream = Stream(live.ws_url)
    try:
        stream.generate("1")
        assert stream.until("1")["type"] == "frame"
        stream.generate("2")
        failed = stream.until("2")
        assert (failed["type"], failed["code"]) == ("error", "internal")
        incident = failed["message"].split("incident ")[1].split(";")[0]
        assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
        assert readyz(live).status_code == 200
        stream.generate("3")
        assert stream.until("3")["type"] == "frame"
    finally:
        stream.close()
    assert set(stream.finals.values()) == {1}


def test_a_hung_batch_is_answered_timeout_and_readyz_is_503_until_it_returns(live, runner):
    release = threading.Event()
    denoise = runner.generator.denoise

    def hangs(*args, **kwargs):
        release.wait(30)
        return denoise(*args, **kwargs)

    runner.generator.denoise = hangs
    runner.deadline_s, deadline_s = 1.0, runner.deadline_s
    stream = Stream(live.ws_url)
    try:
        stream.generate("hung")
        answer = stream.until("hung", timeout=10)
        assert (answer["type"], answer["code"]) == ("error", "timeout")
        ready = readyz(live)
        assert ready.status_code == 503 and "deadline" in ready.json()["reasons"]["tiny"]
        stream.generate("meanwhile")
        assert stream.until("meanwhile")["code"] == "not_ready"
        runner.deadline_s = deadline_s
        serves_again(live, stream, release)
    finally:
        release.set()
        stream.close()
    assert set(stream.finals.values()) == {1}


def test_a_cancelled_runner_loop_is_restarted_and_what_it_held_is_answered(live, runner):
    started, release = threading.Event(), threading.Event()
    denoise = runner.generator.denoise

    def blocks(*args, **kwargs):
        started.set()
        release.wait(30)
        return denoise(*args, **kwargs)

    runner.generator.denoise = blocks
    stream = Stream(live.ws_url)
    try:
        stream.generate("held")
        assert started.wait(10)
        loop = live.engine.supervisor.loops["tiny"]
        loop.get_loop().call_soon_threadsafe(loop.cancel)
        answer = stream.until("held")
        assert (answer["type"], answer["code"]) == ("error", "internal")
        serves_again(live, stream, release)
    finally:
        release.set()
        stream.close()
    assert set(stream.finals.values()) == {1}


def test_clients_that_vanish_mid_frame_or_right_after_the_handshake_free_their_sessions(live):
    for _ in range(3):
        dropped = Stream(live.ws_url)
        dropped.generate("gone")
        dropped.close()  # while its frame is computed
        with connect(live.ws_url + "/v1/stream") as ws:  # closes before reading hello
            pass
    wait_until(lambda: not live.engine.sessions)
    stream = Stream(live.ws_url)
    try:
        stream.generate("still serving")
        assert stream.until("still serving")["type"] == "frame"
    finally:
        stream.close()


def test_sigterm_drains_eight_streaming_sessions(tiny_sd):
    """/readyz turns 503 at once; every input gets one outcome (a frame, superseded, or shutting_down);
    the sockets close with 1001 and the process exits cleanly."""
    port = free_port()
    server = ServeProcess(port, ["--model", str(tiny_sd), "--size", "64x64", "--no-speech", "--drain-seconds", "5"])
    streams = [Stream(server.ws_url) for _ in range(8)]
    closes: list[int] = []
    sent: list[set[str]] = [set() for _ in streams]

    def stream_until_closed(k: int) -> None:
        stream, i = streams[k], 0
        try:
            while True:
                stream.generate(f"{k}-{i}")
                sent[k].add(f"{k}-{i}")
                i += 1
                stream.next()
        except ConnectionClosed as closed:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    stream.next(1)
            closes.append(closed.rcvd.code if closed.rcvd else 0)

    statuses: list[int] = []  # /readyz from the signal until the server is gone

    def poll_readyz() -> None:
        with contextlib.suppress(httpx.HTTPError):
            while True:
                statuses.append(httpx.get(server.url + "/readyz").status_code)

    threads = [threading.Thread(target=stream_until_closed, args=(k,)) for k in range(8)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(stream.finals for stream in streams))
        server.process.send_signal(signal.SIGTERM)
        poller = threading.Thread(target=poll_readyz)
        poller.start()
        for thread in [*threads, poller]:
            thread.join(15)
        assert server.process.wait(15) == 0
    finally:
        server.kill()
    assert 503 in statuses and 200 not in statuses[statuses.index(503):]
    assert closes == [1001] * 8
    for stream, ids in zip(streams, sent, strict=True):
        assert stream.finals.keys() <= ids and set(stream.finals.values()) == {1}
        # An input sent as the socket closed may go unread; every one the server read was answered.
        assert len(ids - stream.finals.keys()) <= 1
