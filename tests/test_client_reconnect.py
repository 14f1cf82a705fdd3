"""The Python clients come back on their own: across a killed and restarted `livegen serve`, a
drain's `shutting_down` and 1001 close, and a server that never returns (they give up in budget).

The server tests run a real `python -m livegen serve` process on one fixed port that a test kills
(SIGKILL) or drains (SIGTERM) and starts again; each start takes several seconds, so the process is shared by the
module and a test leaves it running. What a real server cannot be made to do on cue (cut an
utterance, answer `shutting_down`) is played by a scripted stand-in on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from livegen.client import AsyncClient, Client, ConnectionLost, GenerationError, Reconnect
from livegen.protocol import (
    Audio,
    Error,
    Frame,
    Generate,
    Hello,
    Speak,
    SpeechEnd,
    Superseded,
    encode,
    parse_client_message,
)
from livegen.server.background import ServeProcess, free_port

# Quick retries: a restart is refused, then answered "not ready", for several seconds.
QUICK = Reconnect(first_delay=0.05, min_delay=0.05, max_delay=0.5)


class RestartableServer:
    """`livegen serve` on one port, killed or drained and started again by the tests."""

    def __init__(self, model: Path):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.args = ["--model", str(model), "--size", "64x64", "--max-batch", "1", "--no-speech"]
        self.process: ServeProcess | None = None

    def start(self) -> None:
        self.process = ServeProcess(self.port, self.args)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process = None

    def drain(self) -> None:
        """SIGTERM: the server drains, closes every socket with 1001 and exits."""
        assert self.process is not None
        self.process.process.terminate()
        self.process.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def serving(tiny_sd: Path):
    server = RestartableServer(tiny_sd)
    yield server
    if server.process is not None:
        server.kill()


@pytest.fixture
def restartable(serving: RestartableServer) -> RestartableServer:
    """The shared server, running (a test before may have left it killed)."""
    if serving.process is None:
        serving.start()
    return serving


@pytest.mark.timeout(180)
async def test_a_frames_loop_and_a_generate_loop_carry_on_across_a_server_restart(restartable):
    def generating(client: Client, seeds: list[int]) -> list[Frame]:
        return [client.generate("a red fox", seed=seed) for seed in seeds]

    with Client(restartable.url, reconnect=QUICK) as sync_client:
        sync_first_session = sync_client.hello.session
        sync_frames = generating(sync_client, [0, 1])
        async with AsyncClient(restartable.url, reconnect=QUICK) as client:
            first_session = client.hello.session
            sent = [await client.send("a red fox", seed=0)]
            received: list[str] = []
            restart = generate_loop = None
            try:
                async for frame in client.frames():  # one input in flight at a time: each frame sends the next
                    received.append(frame.id)
                    if len(received) == 6:
                        break
                    sent.append(await client.send("a red fox", seed=len(received)))
                    if len(received) == 3:  # the input just sent is in flight when the server dies
                        restartable.kill()
                        restart = asyncio.create_task(asyncio.to_thread(restartable.start))
                        generate_loop = asyncio.create_task(asyncio.to_thread(generating, sync_client, [2, 3]))
            finally:
                for task in (restart, generate_loop):
                    if task is not None:
                        await task
            sync_frames += generate_loop.result()
    assert received == sent  # the input cut off by the kill was resent and answered, none lost
    assert client.hello.session != first_session
    assert [frame.seed for frame in sync_frames] == [0, 1, 2, 3]  # 2 was sent while the server was down
    assert sync_client.hello.session != sync_first_session


@pytest.mark.timeout(180)
async def test_an_input_sent_while_the_server_is_down_gets_its_frame_after_it_returns(restartable):
    async with AsyncClient(restartable.url, reconnect=QUICK) as client:
        await client.generate("a red fox")
        await asyncio.to_thread(restartable.drain)
        older = await client.send("a red fox", seed=1)
        newest = await client.send("a blue fox", seed=2)
        await asyncio.to_thread(restartable.start)
        outcomes = [await client.receive(), await client.receive()]
    assert outcomes[0] == Superseded(id=older, by=newest)  # latest wins while down, as on the server
    assert isinstance(outcomes[1], Frame) and (outcomes[1].id, outcomes[1].seed) == (newest, 2)


@pytest.mark.timeout(120)
async def test_both_clients_give_up_after_their_budget_when_the_server_never_returns(restartable):
    budget = Reconnect(first_delay=0.05, min_delay=0.05, max_delay=0.2, give_up_after=1.0)

    async def streaming(client: AsyncClient) -> ConnectionLost:
        with pytest.raises(ConnectionLost) as lost:
            async for _ in client.frames():
                pass
        return lost.value

    def generating(client: Client) -> ConnectionLost:
        with pytest.raises(ConnectionLost) as lost:
            client.generate("a red fox")
        return lost.value

    with Client(restartable.url, reconnect=budget) as sync_client:
        async with AsyncClient(restartable.url, reconnect=budget) as async_client:
            restartable.kill()
            started = time.monotonic()
            failures = await asyncio.gather(streaming(async_client), asyncio.to_thread(generating, sync_client))
            waited = time.monotonic() - started
    for failure in failures:
        assert str(restartable.port) in str(failure) and "in 1 s" in str(failure)
        assert isinstance(failure.__cause__, OSError)  # the port refuses: nobody listens
    assert waited >= budget.give_up_after


# ---------------------------------------------------------------- a scripted stand-in server

Script = Callable[[ServerConnection, str], Awaitable[None]]
STAND_IN_HELLO = dict(ready=True, models=[], max_message_bytes=65536, max_prompt_chars=1000)


@contextlib.asynccontextmanager
async def stand_in(*scripts: Script) -> AsyncIterator[str]:
    """A server on loopback whose n-th connection plays scripts[n]; its URL."""
    connections = zip(itertools.count(1), scripts)

    async def handler(ws: ServerConnection) -> None:
        number, script = next(connections)
        await script(ws, f"session-{number}")

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def greet(ws: ServerConnection, session: str) -> None:
    await ws.send(encode(Hello(session=session, **STAND_IN_HELLO)))


def frame_for(request: Generate) -> Frame:
    return Frame(id=request.id, image=b"\xff\xd8", format="jpeg", width=64, height=64, model="stand-in",
                 seed=request.seed or 0, batch_size=1, timings={})


@pytest.mark.timeout(20)
async def test_an_input_a_drain_answers_shutting_down_gets_its_frame_from_the_next_session():
    served: list[Generate] = []

    async def draining(ws: ServerConnection, session: str) -> None:
        await greet(ws, session)
        request = parse_client_message(await ws.recv())
        await ws.send(encode(Error(id=request.id, code="shutting_down", message="the server is shutting down")))
        await ws.close(1001, "going away")

    async def refusing(ws: ServerConnection, session: str) -> None:  # still draining: no new sessions
        await ws.send(encode(Error(code="shutting_down", message="the server is shutting down")))
        await ws.close(1013)

    async def serving(ws: ServerConnection, session: str) -> None:
        await greet(ws, session)
        request = parse_client_message(await ws.recv())
        served.append(request)
        await ws.send(encode(frame_for(request)))
        await ws.wait_closed()

    async with stand_in(draining, refusing, serving) as url, AsyncClient(url, reconnect=QUICK) as client:
        frame = await client.generate("a red fox", seed=5)
        assert client.hello.session == "session-3"
    assert [request.id for request in served] == [frame.id]  # the same input, resent under its own id
    assert served[0].seed == frame.seed == 5


@pytest.mark.timeout(20)
async def test_an_utterance_cut_by_a_drop_raises_and_is_not_said_again():
    heard: list[Speak] = []

    async def cut_short(ws: ServerConnection, session: str) -> None:
        await greet(ws, session)
        request = parse_client_message(await ws.recv())
        await ws.send(encode(Audio(id=request.id, seq=0, sample_rate=24000, pcm=b"\0\0" * 240)))
        await ws.close(1001, "going away")

    async def speaking(ws: ServerConnection, session: str) -> None:
        await greet(ws, session)
        async for message in ws:
            request = parse_client_message(message)
            heard.append(request)
            await ws.send(encode(SpeechEnd(id=request.id, chunks=0, samples=0, sample_rate=24000, timings={})))

    async with stand_in(cut_short, speaking) as url, AsyncClient(url, reconnect=QUICK) as client:
        chunks: list[Audio] = []
        with pytest.raises(GenerationError) as cut:
            await client.say("Hello there, how can I help?", on_audio=chunks.append)
        assert cut.value.error.code == "connection_lost" and len(chunks) == 1
        await client.say("Anything else?")
    assert [request.text for request in heard] == ["Anything else?"]


@pytest.mark.timeout(20)
async def test_with_reconnect_off_a_drop_raises_as_before():
    async def going_away(ws: ServerConnection, session: str) -> None:
        await greet(ws, session)
        await ws.recv()
        await ws.close(1001, "going away")

    async with stand_in(going_away) as url, AsyncClient(url, reconnect=None) as client:
        with pytest.raises(ConnectionClosed):
            await client.generate("a red fox")
