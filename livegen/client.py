"""Python client for the livegen stream: the same protocol the browser speaks.

    async with AsyncClient("ws://127.0.0.1:8000") as client:
        await client.send("a red fox", steps=1)      # latest wins: never waits for the model
        async for frame in client.frames():
            ...

    with Client("ws://127.0.0.1:8000") as client:
        frame = client.generate("a red fox")          # send and wait for that input's outcome
        speech = client.say("Hello there.", on_audio=play)   # chunks as they arrive, then the whole
        speech.save("hello.wav")
"""

from __future__ import annotations

import itertools
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from livegen.protocol import (
    Blocked,
    Codec,
    Error,
    Export,
    Exported,
    Frame,
    Generate,
    Hello,
    Audio,
    Cancelled,
    Outcome,
    Skipped,
    Speak,
    SpeechEnd,
    Superseded,
    decode_server_message,
    encode,
)

STREAM_PATH = "/v1/stream"
MAX_FRAME_BYTES = 64 * 1024 * 1024


class GenerationError(Exception):
    def __init__(self, error: Error):
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


def stream_url(url: str) -> str:
    """Accept http(s)://host:port or ws(s)://host:port[/v1/stream]."""
    url = url.rstrip("/")
    if url.startswith("http"):
        url = "ws" + url[4:]
    return url if url.endswith(STREAM_PATH) else url + STREAM_PATH


@dataclass
class Speech:
    """An utterance's audio as it streamed in: 16-bit mono PCM chunks and the server's end report."""

    id: str
    chunks: list[Audio] = field(default_factory=list)
    end: SpeechEnd | None = None

    @property
    def sample_rate(self) -> int:
        return self.end.sample_rate if self.end else self.chunks[0].sample_rate

    @property
    def pcm(self) -> bytes:
        return b"".join(chunk.pcm for chunk in self.chunks)

    def save(self, path: str | Path) -> None:
        """Write a 16-bit mono WAV file."""
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(self.pcm)

    def take(self, outcome: Outcome, on_audio: Callable[[Audio], None] | None) -> bool:
        """Add one outcome for this utterance; True once it ended. Errors and cancels raise."""
        if outcome.id != self.id:
            return False
        if isinstance(outcome, Audio):
            self.chunks.append(outcome)
            if on_audio is not None:
                on_audio(outcome)
            return False
        if isinstance(outcome, SpeechEnd):
            self.end = outcome
            return True
        if isinstance(outcome, Cancelled):
            raise GenerationError(Error(id=outcome.id, code="cancelled", message=f"by {outcome.by}"))
        raise GenerationError(outcome)  # type: ignore[arg-type]


class _Requests:
    """Builds `generate` messages with fresh ids."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def build(self, prompt: str, id: str | None = None, **fields: Any) -> Generate:
        return Generate(id=id or str(next(self._ids)), prompt=prompt, **fields)

    def speak(self, text: str, id: str | None = None, **fields: Any) -> Speak:
        return Speak(id=id or str(next(self._ids)), text=text, **fields)


def _answer(outcome: Outcome, request_id: str) -> Frame | None:
    """The frame if `outcome` answers `request_id`; raise if it answers it otherwise."""
    if outcome.id != request_id:
        return None
    if isinstance(outcome, Frame):
        return outcome
    if isinstance(outcome, Superseded):
        raise GenerationError(Error(id=outcome.id, code="superseded", message=f"by {outcome.by}"))
    if isinstance(outcome, Skipped):
        raise GenerationError(Error(id=outcome.id, code="skipped", message=f"the frame of {outcome.frame} stands"))
    if isinstance(outcome, Blocked):
        raise GenerationError(Error(id=outcome.id, code="blocked", message=f"{outcome.stage}: {outcome.message}"))
    raise GenerationError(outcome)  # type: ignore[arg-type]


def _exported(outcome: Outcome, frame_id: str) -> Exported | None:
    """The signed file if `outcome` answers the export of `frame_id`; raise on its error."""
    if outcome.id != frame_id or not isinstance(outcome, Exported | Error):
        return None
    if isinstance(outcome, Error):
        raise GenerationError(outcome)
    return outcome


def _hello(data: bytes | str) -> Hello:
    message = decode_server_message(data)
    if isinstance(message, Error):  # e.g. too_many_sessions
        raise GenerationError(message)
    assert isinstance(message, Hello), f"expected hello, got {message!r}"
    return message


def _outcome(data: bytes | str) -> Outcome:
    message = decode_server_message(data)
    assert not isinstance(message, Hello), "hello arrives only first"
    return message


class AsyncClient:
    """`codec="json"` speaks JSON text messages, as the browser playground does."""

    def __init__(self, url: str = "ws://127.0.0.1:8000", codec: Codec = "msgpack"):
        self.url = stream_url(url) + ("?codec=json" if codec == "json" else "")
        self.codec = codec
        self._requests = _Requests()
        self._ws: ClientConnection | None = None
        self.hello: Hello | None = None

    async def __aenter__(self) -> AsyncClient:
        self._ws = await connect(self.url, max_size=MAX_FRAME_BYTES)
        self.hello = _hello(await self._ws.recv())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send(self, prompt: str, **fields: Any) -> str:
        """Send an input and return its id at once; the server keeps only the latest waiting one."""
        request = self._requests.build(prompt, **fields)
        await self.send_raw(encode(request, self.codec))
        return request.id

    async def send_raw(self, data: bytes | str) -> None:
        assert self._ws is not None, "use `async with AsyncClient(...)`"
        await self._ws.send(data)

    async def receive(self) -> Outcome:
        assert self._ws is not None, "use `async with AsyncClient(...)`"
        return _outcome(await self._ws.recv())

    async def outcomes(self) -> AsyncIterator[Outcome]:
        while True:
            yield await self.receive()

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames only; superseded and skipped inputs are passed over, errors raise GenerationError."""
        async for outcome in self.outcomes():
            if isinstance(outcome, Error):
                raise GenerationError(outcome)
            if isinstance(outcome, Frame):
                yield outcome

    async def generate(self, prompt: str, **fields: Any) -> Frame:
        """Send one input and wait for its own outcome."""
        request_id = await self.send(prompt, **fields)
        while (frame := _answer(await self.receive(), request_id)) is None:
            pass
        return frame

    async def export(self, frame_id: str) -> Exported:
        """One of the session's latest frames as a file with signed Content Credentials."""
        await self.send_raw(encode(Export(id=frame_id), self.codec))
        while (exported := _exported(await self.receive(), frame_id)) is None:
            pass
        return exported

    async def speak(self, text: str, **fields: Any) -> str:
        """Send an utterance, or a piece of one (`id=` the same, `final=False` until the last)."""
        request = self._requests.speak(text, **fields)
        await self.send_raw(encode(request, self.codec))
        return request.id

    async def say(self, text: str, on_audio: Callable[[Audio], None] | None = None, **fields: Any) -> Speech:
        """Stream one utterance: `on_audio` gets each chunk as it arrives; returns the whole."""
        speech = Speech(await self.speak(text, **fields))
        while not speech.take(await self.receive(), on_audio):
            pass
        return speech


class Client:
    """The synchronous twin of AsyncClient, for scripts and notebooks."""

    def __init__(self, url: str = "ws://127.0.0.1:8000"):
        self.url = stream_url(url)
        self._requests = _Requests()
        self._ws: SyncConnection | None = None
        self.hello: Hello | None = None

    def __enter__(self) -> Client:
        self._ws = sync_connect(self.url, max_size=MAX_FRAME_BYTES)
        self.hello = _hello(self._ws.recv())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()

    def send(self, prompt: str, **fields: Any) -> str:
        request = self._requests.build(prompt, **fields)
        assert self._ws is not None, "use `with Client(...)`"
        self._ws.send(encode(request))
        return request.id

    def receive(self, timeout: float | None = None) -> Outcome:
        assert self._ws is not None, "use `with Client(...)`"
        return _outcome(self._ws.recv(timeout=timeout))

    def frames(self) -> Iterator[Frame]:
        while True:
            outcome = self.receive()
            if isinstance(outcome, Error):
                raise GenerationError(outcome)
            if isinstance(outcome, Frame):
                yield outcome

    def generate(self, prompt: str, **fields: Any) -> Frame:
        request_id = self.send(prompt, **fields)
        while (frame := _answer(self.receive(), request_id)) is None:
            pass
        return frame

    def export(self, frame_id: str) -> Exported:
        assert self._ws is not None, "use `with Client(...)`"
        self._ws.send(encode(Export(id=frame_id)))
        while (exported := _exported(self.receive(), frame_id)) is None:
            pass
        return exported

    def say(self, text: str, on_audio: Callable[[Audio], None] | None = None, **fields: Any) -> Speech:
        request = self._requests.speak(text, **fields)
        assert self._ws is not None, "use `with Client(...)`"
        self._ws.send(encode(request))
        speech = Speech(request.id)
        while not speech.take(self.receive(), on_audio):
            pass
        return speech
