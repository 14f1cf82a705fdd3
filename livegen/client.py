"""Python client for the livegen stream: the same protocol the browser speaks.

    async with AsyncClient("ws://127.0.0.1:8000") as client:
        await client.send("a red fox", steps=1)      # latest wins: never waits for the model
        async for frame in client.frames():
            ...

    with Client("ws://127.0.0.1:8000") as client:
        frame = client.generate("a red fox")          # send and wait for that input's outcome
        speech = client.say("Hello there.", on_audio=play)   # chunks as they arrive, then the whole
        speech.save("hello.wav")

Both come back on their own when the connection drops or the server goes away (a crash, a
restart, a drain's 1001 close): the next call that waits for an outcome opens a new session
with backoff and resends the newest input still owed one, so a `frames()` loop or a
`generate()` carries on across a server restart. `Reconnect` sets the delays and the budget;
`reconnect=None` turns it off.

A server with API keys wants a credential on every connection: `api_key=` (scripts, backends),
or `token=`, a token or a function that returns a fresh one (from your backend's
POST /v1/tokens), called again for each new connection:

    async with AsyncClient(url, token=fetch_token) as client:   # fetch_token may be async
        ...

The client keeps its session open itself: a provider's token is refreshed at 90% of its life
(as fal's client does), and a session quiet for a third of the server's idle timeout sends a
`ping`; their answers never reach the caller. A credential the server refuses raises `Refused`
at once, never a reconnect loop; a session the server ends for its credential raises
GenerationError (`token_expired`, `unauthorized`), except a provider's expired token, which
a reconnect replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import backoff, process_exception
from websockets.exceptions import ConnectionClosed, InvalidStatus
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
    ClientRequest,
    Outcome,
    Ping,
    Pong,
    Refresh,
    Refreshed,
    Skipped,
    Speak,
    SpeechEnd,
    Superseded,
    decode_server_message,
    wav_file,
    encode,
)

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"
MAX_FRAME_BYTES = 64 * 1024 * 1024
HELLO_TIMEOUT = 10.0  # seconds for a new connection's hello, as websockets' own open_timeout
CONNECTION_LOST = "connection_lost"  # the client's own error code: see `_Ledger`
# Answers instead of a hello that mean "come back later", not "you asked for something wrong".
COME_BACK_LATER = frozenset({"not_ready", "shutting_down", "too_many_sessions"})
# Close codes that say the server went away: 1000 normal, 1001 going away (a drain), 1006 gone
# without a close (a crash), 1011 server error, 1012 restart, 1013 try again later, 1014 bad
# gateway. Not 1008 or 1009: a new session would only meet the client's own fault again.
SERVER_WENT_AWAY = frozenset({1000, 1001, 1006, 1011, 1012, 1013, 1014})
POLICY_VIOLATION = 1008  # the server's close for a revoked key or an expired token; its reason is the code
REFRESH_AT = 0.9  # of a token's remaining life: a refresh then leaves a tenth for a slow provider
MIN_REFRESH_SECONDS = 1.0  # no refresh sooner than this: a provider handing back a dying token cannot spin
KEEPALIVE_SECONDS = 30.0  # the longest quiet before a `ping`; a third of the server's idle timeout if shorter
READ_AHEAD = 16  # outcomes the upkeep may read ahead for the caller: websockets' own queue (max_queue)
# Errors without an id that answer a `refresh` or a `ping` the client sent itself.
UPKEEP_REFUSALS = frozenset({"unauthorized", "forbidden", "token_expired", "rate_limited"})
# Errors without an id that the server sends just before it ends the session (then it closes).
SESSION_ENDINGS = frozenset({"token_expired", "unauthorized", "idle_timeout"})

AsyncTokenSource = str | Callable[[], str | Awaitable[str]]
TokenSource = str | Callable[[], str]
Received = Outcome | Refreshed | Pong


class GenerationError(Exception):
    def __init__(self, error: Error):
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class ConnectionLost(Exception):
    """The connection dropped and no new session opened within the reconnect budget."""


class Refused(GenerationError):
    """The server refused the connection at its upgrade, before any session: HTTP 401
    (`unauthorized`, `token_expired`), 403 (`forbidden`), 429 (`too_many_sessions`).

    The first connection raises it at once. A reconnect raises it too, except a 429: the key's
    session that just dropped may still count on the server for a moment, so that one is
    retried within the reconnect budget like any `too_many_sessions`.
    """

    def __init__(self, error: Error, status: int):
        super().__init__(error)
        self.status = status


@dataclass(frozen=True)
class Reconnect:
    """How a client comes back after its connection drops.

    The delays are websockets' own backoff: the first is random in [0, first_delay), so the
    clients of a drained server do not all return at the same instant (RFC 6455, 7.2.3), then
    min_delay grows by factor up to max_delay (the playground's 250 ms doubling to 4 s). After
    give_up_after seconds without a new session the waiting call raises ConnectionLost.
    """

    first_delay: float = 0.5
    min_delay: float = 0.25
    max_delay: float = 4.0
    factor: float = 2.0
    give_up_after: float = 120.0

    def delays(self) -> Iterator[float]:
        return backoff(self.first_delay, self.min_delay, self.max_delay, self.factor)


class _Attempts:
    """One reconnect's schedule: backoff delays until the budget is spent, the last attempt at its end."""

    def __init__(self, policy: Reconnect, url: str):
        self.policy, self.url = policy, url
        self.delays = policy.delays()
        self.deadline = time.monotonic() + policy.give_up_after
        self.count = 0

    def next_delay(self) -> float:
        self.count += 1
        return max(0.0, min(next(self.delays), self.deadline - time.monotonic()))

    def failed(self, failure: Exception) -> None:
        """Raise `failure` if it is fatal, or ConnectionLost once the budget is spent."""
        if not _retryable(failure):
            raise failure
        if time.monotonic() >= self.deadline:
            raise ConnectionLost(f"lost the connection to {self.url} and could not reconnect in "
                                 f"{self.policy.give_up_after:g} s ({self.count} attempts): {failure}") from failure
        log.debug("reconnect attempt %d to %s failed: %s", self.count, self.url, failure)


def _retryable(failure: Exception) -> bool:
    if isinstance(failure, Refused) and failure.status >= 500:  # a proxy's or server's trouble
        return True
    if isinstance(failure, GenerationError):  # the server answered instead of a hello, or refused
        return failure.error.code in COME_BACK_LATER
    if isinstance(failure, ConnectionClosed):  # closed before its hello
        return True
    return process_exception(failure) is None  # websockets' rule: network errors, 5xx answers


def _server_went_away(lost: ConnectionClosed) -> bool:
    return lost.rcvd is None or lost.rcvd.code in SERVER_WENT_AWAY


def _token_ran_out(lost: ConnectionClosed) -> bool:
    """The server ended the session on its expired token: a new token opens a new one."""
    return lost.rcvd is not None and lost.rcvd.code == POLICY_VIOLATION and lost.rcvd.reason == "token_expired"


def _ended(lost: ConnectionClosed, said: Error | None) -> GenerationError | None:
    """Why the server ended the session (a revoked key, an expired token, silence), as an error to
    raise instead of the bare close: its last message if read, else its close reason."""
    if said is not None:
        return GenerationError(said)
    if lost.rcvd is not None and lost.rcvd.reason in SESSION_ENDINGS:
        return GenerationError(Error(code=lost.rcvd.reason, message=f"the server ended the session "
                                     f"(close {lost.rcvd.code})"))
    return None


def _refused(failure: InvalidStatus) -> Exception:
    """The server's typed `error` of a refused upgrade as Refused; `failure` itself without one."""
    try:
        error = Error.model_validate_json(failure.response.body)
    except ValueError:
        return failure
    return Refused(error, failure.response.status_code)


def _authorization(credential: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {credential}"} if credential else None


def _one_credential(api_key: str | None, token: object) -> None:
    if api_key is not None and token is not None:
        raise ValueError("give api_key or token, not both: a session runs on one credential")


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
        """Write a 16-bit mono WAV file (unsigned: `export` the utterance for one with Content Credentials)."""
        Path(path).write_bytes(wav_file(self.pcm, self.sample_rate))

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
        if isinstance(outcome, Blocked):  # the audio before the blocked phrase is in `chunks`
            raise GenerationError(Error(id=outcome.id, code="blocked", message=f"{outcome.stage}: {outcome.message}"))
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


def _hello(data: bytes | str, require_ready: bool) -> Hello:
    message = decode_server_message(data)
    if isinstance(message, Error):  # e.g. too_many_sessions
        raise GenerationError(message)
    assert isinstance(message, Hello), f"expected hello, got {message!r}"
    if require_ready and not message.ready:  # a restarted server listens while it warms up
        raise GenerationError(Error(code="not_ready", message="the server is still warming its models"))
    return message


def _decode(data: bytes | str) -> Received:
    message = decode_server_message(data)
    assert not isinstance(message, Hello), "hello arrives only first"
    return message


def _session_ending(message: Received) -> Error | None:
    """The error the server sends just before it ends a session: held back, not an outcome, as
    the close after it decides what the caller sees (nothing, if the client reconnects)."""
    if isinstance(message, Error) and message.id is None and message.code in SESSION_ENDINGS:
        return message
    return None


def _ahead(message: Received, upkeep: _Upkeep) -> bool:
    """Whether a message the upkeep read is for the caller's next receive (or its ending)."""
    return not upkeep.heard(message) or _session_ending(message) is not None


class _Upkeep:
    """One connection's refreshes and keepalive pings: what to send, and when.

    Whoever reads the socket tells it what the server answered (`heard`), the senders when
    anything went out (`sent`); one task or thread per connection asks `next()` and sends. That
    sender reads its answers itself only when it wakes, so until a `refreshed` is read the next
    refresh is planned as if the new token lasts as long as the last one did.
    """

    def __init__(self, hello: Hello, renewable: bool):
        self.ping_every = min(KEEPALIVE_SECONDS, hello.idle_seconds / 3) if hello.idle_seconds else None
        self.renewable = renewable and hello.expires_at is not None
        self.expires_at = hello.expires_at or 0.0  # the server's word on the token in force
        self.lifetime = self.expires_at - time.time()  # what it had left when that word came
        self.refresh_at: float | None = None
        self.sent_at = time.monotonic()
        self.awaiting: deque[str] = deque()  # "refresh" and "ping" sent and not yet answered, in order
        self.stopped = False
        self.woken: Callable[[], None] = lambda: None  # the sender's wake-up: the plan changed
        self._lock = threading.Lock()  # the sync client's reader and upkeep threads share it
        self._plan(self.lifetime)

    @property
    def needed(self) -> bool:
        return self.renewable or self.ping_every is not None

    def next(self) -> tuple[str | None, float | None]:
        """What is due now ("refresh" or "ping"), else None and the seconds until something may be."""
        with self._lock:
            now = time.monotonic()
            ping_at = self.sent_at + self.ping_every if self.ping_every is not None else None
            if self.refresh_at is not None and now >= self.refresh_at:
                return "refresh", None
            if ping_at is not None and now >= ping_at:
                return "ping", None
            times = [at for at in (self.refresh_at, ping_at) if at is not None]
            return None, min(times) - now if times else None

    def sent(self) -> None:
        """Any message went out: the server heard from the client, no ping is due yet."""
        self.sent_at = time.monotonic()

    def sending(self, kind: str) -> None:
        with self._lock:
            self.awaiting.append(kind)
            self.sent_at = time.monotonic()
            if kind == "refresh":
                self._plan(self.lifetime)

    def failed(self) -> None:
        """No refresh went out (the provider failed): try again in what the token in force has left."""
        with self._lock:
            self._plan(self.expires_at - time.time())
        self.woken()

    def heard(self, message: Hello | Outcome | Refreshed | Pong) -> bool:
        """True when `message` answers the upkeep (`refreshed`, `pong`, a refusal of either)."""
        with self._lock:
            if isinstance(message, Refreshed):
                self._answered("refresh")
                self.expires_at = message.expires_at
                self.lifetime = message.expires_at - time.time()
                self._plan(self.lifetime)
            elif isinstance(message, Pong):
                self._answered("ping")
            elif isinstance(message, Error) and message.id is None and message.code in UPKEEP_REFUSALS \
                    and self.awaiting:
                if self.awaiting.popleft() == "refresh":  # the session runs on until the old token expires
                    log.warning("the server refused a token refresh (%s: %s)", message.code, message.message)
                    self._plan(self.expires_at - time.time())
            else:
                return False
        self.woken()
        return True

    def stop(self) -> None:
        self.stopped = True
        self.woken()

    def _answered(self, kind: str) -> None:
        with contextlib.suppress(ValueError):  # an answer to a message sent with send_raw
            self.awaiting.remove(kind)

    def _plan(self, remaining: float) -> None:
        """The next refresh at 90% of `remaining`; none if that is under a second away."""
        delay = REFRESH_AT * remaining
        self.refresh_at = time.monotonic() + delay if self.renewable and delay >= MIN_REFRESH_SECONDS else None


class _Ledger:
    """What the client still awaits, so that a dropped connection loses no outcome.

    On a new session the newest `generate` still owed an outcome (in flight when the connection
    dropped, sent while it was down, or answered `shutting_down` by a draining server) is resent
    under its own id, so whoever waits for that id gets its outcome there. Older owed ones are
    answered `superseded` by it here, as the server answers an input a newer one replaced. An
    utterance or an export owed when a connection ends is answered here with a
    `connection_lost` error and never resent: see `AsyncClient.say`.
    """

    def __init__(self) -> None:
        self.inputs: dict[str, Generate] = {}  # owed generates, oldest first
        self.others: dict[str, str] = {}  # owed utterances and exports: id -> what it awaits
        self.made_here: deque[Outcome] = deque()  # outcomes the client answered itself, not yet read

    def sent(self, request: ClientRequest) -> None:
        if isinstance(request, Generate):
            self.inputs.pop(request.id, None)  # a repeated id becomes the newest
            self.inputs[request.id] = request
        elif isinstance(request, Speak | Export):
            self.others[request.id] = "the utterance ended" if isinstance(request, Speak) else "the export came"

    def answered(self, outcome: Outcome) -> bool:
        """Strike what `outcome` settles; False for a drain's answer to an input the next session gets."""
        if isinstance(outcome, Error) and outcome.code == "shutting_down" and outcome.id in self.inputs:
            return False
        if isinstance(outcome, Frame | Superseded | Skipped | Blocked):
            self.inputs.pop(outcome.id, None)
        elif isinstance(outcome, SpeechEnd | Cancelled | Exported):
            self.others.pop(outcome.id, None)
        elif isinstance(outcome, Error) and self.inputs.pop(outcome.id or "", None) is None:
            self.others.pop(outcome.id or "", None)
        return True

    def connection_ended(self) -> None:
        """Answer the owed utterances and exports: no server will answer them now."""
        for id, what in self.others.items():
            self.made_here.append(Error(id=id, code=CONNECTION_LOST,
                                        message=f"the connection dropped before {what}; it is not resent"))
        self.others.clear()

    def to_resend(self) -> Generate | None:
        """On a new session: the newest owed input, whose outcome is to come from there."""
        if not self.inputs:
            return None
        *older, newest = self.inputs.values()
        self.made_here.extend(Superseded(id=request.id, by=newest.id) for request in older)
        self.inputs = {newest.id: newest}
        return newest


class AsyncClient:
    """`codec="json"` speaks JSON text messages, as the browser playground does.

    When the connection drops or the server goes away, the next `receive()` (and so `frames()`,
    `outcomes()`, `generate()` and `say()`) opens a new session with `reconnect`'s backoff,
    updates `hello` (the new session has a new id), and resends the newest input still owed an
    outcome. An input sent while the connection is down waits for the new session, and a newer
    one replaces it: latest wins. The first connection is not retried: a wrong address fails at
    once. `reconnect=None`: a drop raises websockets' ConnectionClosed, as before, or
    GenerationError when the server ended the session and said why (`idle_timeout` too).

    `api_key` or `token` (a string, or a function, plain or async, that returns a fresh token)
    goes in each connection's Authorization header. Only a function lets the client refresh a
    session's token, or reconnect when it expired anyway; a string token's session ends with it.
    Refreshes and pings go out from one background task per connection.
    """

    def __init__(self, url: str = "ws://127.0.0.1:8000", codec: Codec = "msgpack",
                 reconnect: Reconnect | None = Reconnect(), *, api_key: str | None = None,
                 token: AsyncTokenSource | None = None):
        _one_credential(api_key, token)
        self.url = stream_url(url) + ("?codec=json" if codec == "json" else "")
        self.codec = codec
        self.reconnect = reconnect
        self._api_key = api_key
        self._token = token
        self._renewable = callable(token)
        self._requests = _Requests()
        self._ledger = _Ledger()
        self._ws: ClientConnection | None = None
        self._lost: ConnectionClosed | None = None  # the drop a new session is still due for
        self._ending: Error | None = None  # the server's last word before it ends the session
        self._upkeep: _Upkeep | None = None
        self._upkeep_task: asyncio.Task | None = None
        self._reading = asyncio.Lock()  # one reader of the socket: the caller's receive() or the upkeep
        self._read_ahead: deque[Received] = deque()  # what the upkeep read for the caller
        self._closed = False
        self.hello: Hello | None = None

    async def __aenter__(self) -> AsyncClient:
        self._ws, self.hello = await self._open(require_ready=False)
        self._keep_up(self._ws, self.hello)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        task = self._stop_upkeep()
        if task is not None:
            await asyncio.wait({task})
        if self._ws is not None:
            await self._ws.close()

    async def send(self, prompt: str, **fields: Any) -> str:
        """Send an input and return its id at once; the server keeps only the latest waiting one."""
        request = self._requests.build(prompt, **fields)
        await self._send(request)
        return request.id

    async def send_raw(self, data: bytes | str) -> None:
        """Send a message as it is; the client does not resend it after a drop."""
        assert self._ws is not None and self._upkeep is not None, "use `async with AsyncClient(...)`"
        await self._ws.send(data)
        self._upkeep.sent()

    async def receive(self) -> Outcome:
        """The next outcome; after a drop, the outcomes the client answered itself, then a new session's."""
        assert self._ws is not None and self._upkeep is not None, "use `async with AsyncClient(...)`"
        while True:
            if self._ledger.made_here:
                return self._ledger.made_here.popleft()
            if self._lost is not None:
                await self._reconnect()
                continue  # what the reconnect answered itself comes first
            try:
                async with self._reading:
                    message, heard = await self._next_message()
            except ConnectionClosed as lost:
                self._stop_upkeep()
                if not self._may_reconnect(lost):
                    if (ended := _ended(lost, self._ending)) is not None:
                        raise ended from lost
                    raise
                self._ending = None
                self._ledger.connection_ended()
                self._lost = lost
                continue
            self._ending = _session_ending(message)
            if heard or self._ending is not None:
                continue
            if self._ledger.answered(message) or self.reconnect is None:
                return message

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
        """Send one input and wait for its own outcome, across reconnects (ConnectionLost if none comes back)."""
        request_id = await self.send(prompt, **fields)
        while (frame := _answer(await self.receive(), request_id)) is None:
            pass
        return frame

    async def export(self, frame_id: str) -> Exported:
        """One of the session's latest frames as a file with signed Content Credentials."""
        await self._send(Export(id=frame_id))
        while (exported := _exported(await self.receive(), frame_id)) is None:
            pass
        return exported

    async def speak(self, text: str, **fields: Any) -> str:
        """Send an utterance, or a piece of one (`id=` the same, `final=False` until the last).

        An utterance a drop cuts is answered `connection_lost`; a later piece with its id starts
        a new utterance on the new session, as after any utterance that ended.
        """
        request = self._requests.speak(text, **fields)
        await self._send(request)
        return request.id

    async def say(self, text: str, on_audio: Callable[[Audio], None] | None = None, **fields: Any) -> Speech:
        """Stream one utterance: `on_audio` gets each chunk as it arrives; returns the whole.

        If the connection drops before the utterance ends, this raises GenerationError with code
        `connection_lost` instead of saying it again on the new session: part of it may have been
        played already, and only the caller knows whether to repeat it, go on from where it broke
        off, or say something else by now. The next call that waits opens the new session.
        """
        if self._lost is not None:  # a drop already reported: speak on a new session, whole
            await self._reconnect()
        speech = Speech(await self.speak(text, **fields))
        while not speech.take(await self.receive(), on_audio):
            pass
        return speech

    def _may_reconnect(self, lost: ConnectionClosed) -> bool:
        return self.reconnect is not None and not self._closed and (
            _server_went_away(lost) or (self._renewable and _token_ran_out(lost)))

    async def _send(self, request: ClientRequest) -> None:
        assert self._ws is not None and self._upkeep is not None, "use `async with AsyncClient(...)`"
        self._ledger.sent(request)
        try:
            await self._ws.send(encode(request, self.codec))
            self._upkeep.sent()
        except ConnectionClosed as lost:
            if not self._may_reconnect(lost):
                if (ended := _ended(lost, None)) is not None:
                    raise ended from lost
                raise
            # Not sent: the ledger keeps it owed, for the new session or a `connection_lost`.

    async def _next_message(self) -> tuple[Received, bool]:
        """The next message, one the upkeep read ahead first; and whether it answered the upkeep."""
        assert self._ws is not None and self._upkeep is not None
        if self._read_ahead:
            return self._read_ahead.popleft(), False
        message = _decode(await self._ws.recv())
        return message, self._upkeep.heard(message)

    async def _credential(self) -> str | None:
        """The API key, the token, or a fresh one from the provider."""
        if not callable(self._token):
            return self._token or self._api_key
        token = self._token()
        return await token if inspect.isawaitable(token) else token

    async def _open(self, require_ready: bool) -> tuple[ClientConnection, Hello]:
        """Connect and read the session's hello; nothing stays open if that fails."""
        try:
            ws = await connect(self.url, max_size=MAX_FRAME_BYTES,
                               additional_headers=_authorization(await self._credential()))
        except InvalidStatus as failure:
            if (refused := _refused(failure)) is failure:
                raise
            raise refused from failure
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                return ws, _hello(await ws.recv(), require_ready)
        except BaseException:
            await ws.close()
            raise

    async def _reconnect(self) -> None:
        """A new session after backoff, then the newest owed input resent on it."""
        assert self.reconnect is not None and self._lost is not None
        log.info("connection to %s lost (%s); reconnecting", self.url, self._lost)
        attempts = _Attempts(self.reconnect, self.url)
        while True:
            await asyncio.sleep(attempts.next_delay())
            if self._closed:
                raise self._lost
            try:
                ws, hello = await self._open(require_ready=True)
                break
            except Exception as failure:
                attempts.failed(failure)
        if self._closed:  # closed while that connection opened
            await ws.close()
            raise self._lost
        # Nothing is awaited between the switch and choosing what to resend, so an input goes out
        # once: sent before the switch, it is resent here; after it, send() sends it itself.
        self._ws, self.hello, self._lost = ws, hello, None
        self._keep_up(ws, hello)
        self._ledger.connection_ended()  # utterances and exports sent while it was down
        resend = self._ledger.to_resend()
        log.info("reconnected to %s as session %s after %d attempts", self.url, hello.session, attempts.count)
        if resend is not None:
            with contextlib.suppress(ConnectionClosed):  # a drop now is the next recv's to notice
                await ws.send(encode(resend, self.codec))

    def _keep_up(self, ws: ClientConnection, hello: Hello) -> None:
        """The new connection's upkeep task, when its hello asks for refreshes or pings."""
        self._stop_upkeep()
        upkeep = self._upkeep = _Upkeep(hello, self._renewable)
        if upkeep.needed:
            woken = asyncio.Event()
            upkeep.woken = woken.set
            self._upkeep_task = asyncio.create_task(self._upkeep_loop(ws, upkeep, woken))

    def _stop_upkeep(self) -> asyncio.Task | None:
        task, self._upkeep_task = self._upkeep_task, None
        if self._upkeep is not None:
            self._upkeep.stop()
        if task is not None:
            task.cancel()
        return task

    async def _upkeep_loop(self, ws: ClientConnection, upkeep: _Upkeep, woken: asyncio.Event) -> None:
        """Refresh and ping on `ws` as `upkeep` plans, until it stops or the connection ends."""
        while not upkeep.stopped:  # checked, not only cancelled: 3.11's wait_for can swallow a cancel
            woken.clear()
            due, wait = upkeep.next()
            if due is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await woken.wait()
                continue
            await self._drain(ws, upkeep)  # a `refreshed` read now may put the refresh off
            if (due := upkeep.next()[0]) is None:
                continue
            try:
                message: Refresh | Ping = Refresh(token=await self._credential()) if due == "refresh" else Ping()
            except Exception:
                log.warning("the token provider failed; the session's token runs on until it expires", exc_info=True)
                upkeep.failed()
                continue
            upkeep.sending(due)
            try:
                await ws.send(encode(message, self.codec))
            except ConnectionClosed:
                return  # the reader notices the drop

    async def _drain(self, ws: ClientConnection, upkeep: _Upkeep) -> None:
        """Read the upkeep's answers that arrived while no caller was reading.

        Unread, a quiet session's pongs would fill websockets' queue, which then stops reading
        the socket: its keepalive goes unanswered and the connection drops. Outcomes met on the
        way wait in `_read_ahead` for the caller, READ_AHEAD at most, as the queue would hold them.
        """
        if self._reading.locked():
            return  # a caller is reading: it meets the answers itself
        async with self._reading:
            while upkeep.awaiting and len(self._read_ahead) < READ_AHEAD and not upkeep.stopped:
                try:
                    async with asyncio.timeout(0):  # what has arrived; recv() is safe to cancel
                        message = _decode(await ws.recv())
                except (TimeoutError, ConnectionClosed):
                    return
                if _ahead(message, upkeep):
                    self._read_ahead.append(message)


class Client:
    """The synchronous twin of AsyncClient, for scripts and notebooks; it reconnects the same way.

    `receive()`'s `timeout` bounds each wait for an outcome, not a reconnect in progress.
    `api_key` and `token` as AsyncClient's, a provider being a plain function; refreshes and
    pings go out from one daemon thread per connection, under the same lock as every send.
    """

    def __init__(self, url: str = "ws://127.0.0.1:8000", reconnect: Reconnect | None = Reconnect(), *,
                 api_key: str | None = None, token: TokenSource | None = None):
        _one_credential(api_key, token)
        self.url = stream_url(url)
        self.reconnect = reconnect
        self._api_key = api_key
        self._token = token
        self._renewable = callable(token)
        self._requests = _Requests()
        self._ledger = _Ledger()
        # A sender thread and a reader thread may share a client: the ledger and the switch to a
        # new connection change under this lock, so no input falls between two connections.
        self._lock = threading.Lock()
        self._ws: SyncConnection | None = None
        self._lost: ConnectionClosed | None = None
        self._ending: Error | None = None
        self._upkeep: _Upkeep | None = None
        self._reading = threading.Lock()  # one reader of the socket: the caller's receive() or the upkeep
        self._read_ahead: deque[Received] = deque()
        self._closed = False
        self.hello: Hello | None = None

    def __enter__(self) -> Client:
        self._ws, self.hello = self._open(require_ready=False)
        self._keep_up(self._ws, self.hello)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._upkeep is not None:
            self._upkeep.stop()
        if self._ws is not None:
            self._ws.close()

    def send(self, prompt: str, **fields: Any) -> str:
        request = self._requests.build(prompt, **fields)
        self._send(request)
        return request.id

    def receive(self, timeout: float | None = None) -> Outcome:
        assert self._ws is not None and self._upkeep is not None, "use `with Client(...)`"
        deadline = None  # pongs and refreshes do not restart the wait
        while True:
            if self._ledger.made_here:
                return self._ledger.made_here.popleft()
            if self._lost is not None:
                self._reconnect()
                deadline = None
                continue
            if timeout is not None and deadline is None:
                deadline = time.monotonic() + timeout
            try:
                with self._reading:
                    message, heard = self._next_message(deadline)
            except ConnectionClosed as lost:
                self._upkeep.stop()
                if not self._may_reconnect(lost):
                    if (ended := _ended(lost, self._ending)) is not None:
                        raise ended from lost
                    raise
                self._ending = None
                with self._lock:
                    self._ledger.connection_ended()
                self._lost = lost
                continue
            self._ending = _session_ending(message)
            if heard or self._ending is not None:
                continue
            with self._lock:
                settled = self._ledger.answered(message)
            if settled or self.reconnect is None:
                return message

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
        self._send(Export(id=frame_id))
        while (exported := _exported(self.receive(), frame_id)) is None:
            pass
        return exported

    def say(self, text: str, on_audio: Callable[[Audio], None] | None = None, **fields: Any) -> Speech:
        """As AsyncClient.say: an utterance a drop cuts raises `connection_lost`, never said twice."""
        if self._lost is not None:
            self._reconnect()
        request = self._requests.speak(text, **fields)
        self._send(request)
        speech = Speech(request.id)
        while not speech.take(self.receive(), on_audio):
            pass
        return speech

    def _may_reconnect(self, lost: ConnectionClosed) -> bool:
        return self.reconnect is not None and not self._closed and (
            _server_went_away(lost) or (self._renewable and _token_ran_out(lost)))

    def _send(self, request: ClientRequest) -> None:
        assert self._ws is not None and self._upkeep is not None, "use `with Client(...)`"
        with self._lock:
            self._ledger.sent(request)
            try:
                self._ws.send(encode(request))
                self._upkeep.sent()
            except ConnectionClosed as lost:
                if not self._may_reconnect(lost):
                    if (ended := _ended(lost, None)) is not None:
                        raise ended from lost
                    raise

    def _next_message(self, deadline: float | None) -> tuple[Received, bool]:
        assert self._ws is not None and self._upkeep is not None
        if self._read_ahead:
            return self._read_ahead.popleft(), False
        message = _decode(self._ws.recv(timeout=None if deadline is None else max(0.0, deadline - time.monotonic())))
        return message, self._upkeep.heard(message)

    def _credential(self) -> str | None:
        if not callable(self._token):
            return self._token or self._api_key
        token = self._token()
        if not isinstance(token, str):
            raise TypeError(f"Client's token provider must return a str, not {type(token).__name__} "
                            "(an async provider is for AsyncClient)")
        return token

    def _open(self, require_ready: bool) -> tuple[SyncConnection, Hello]:
        try:
            ws = sync_connect(self.url, max_size=MAX_FRAME_BYTES, additional_headers=_authorization(self._credential()))
        except InvalidStatus as failure:
            if (refused := _refused(failure)) is failure:
                raise
            raise refused from failure
        try:
            return ws, _hello(ws.recv(timeout=HELLO_TIMEOUT), require_ready)
        except BaseException:
            ws.close()
            raise

    def _reconnect(self) -> None:
        assert self.reconnect is not None and self._lost is not None
        log.info("connection to %s lost (%s); reconnecting", self.url, self._lost)
        attempts = _Attempts(self.reconnect, self.url)
        while True:
            time.sleep(attempts.next_delay())
            if self._closed:
                raise self._lost
            try:
                ws, hello = self._open(require_ready=True)
                break
            except Exception as failure:
                attempts.failed(failure)
        with self._lock:
            if self._closed:
                ws.close()
                raise self._lost
            self._ws, self.hello, self._lost = ws, hello, None
            self._keep_up(ws, hello)
            self._ledger.connection_ended()
            resend = self._ledger.to_resend()
            log.info("reconnected to %s as session %s after %d attempts", self.url, hello.session, attempts.count)
            if resend is not None:
                with contextlib.suppress(ConnectionClosed):
                    ws.send(encode(resend))

    def _keep_up(self, ws: SyncConnection, hello: Hello) -> None:
        """The new connection's upkeep thread, when its hello asks for refreshes or pings."""
        if self._upkeep is not None:
            self._upkeep.stop()
        upkeep = self._upkeep = _Upkeep(hello, self._renewable)
        if upkeep.needed:
            woken = threading.Event()
            upkeep.woken = woken.set
            threading.Thread(target=self._upkeep_loop, args=(ws, upkeep, woken), name=f"livegen-upkeep-{hello.session}",
                             daemon=True).start()

    def _upkeep_loop(self, ws: SyncConnection, upkeep: _Upkeep, woken: threading.Event) -> None:
        """Refresh and ping on `ws` as `upkeep` plans, until it stops or the connection ends."""
        while not upkeep.stopped:
            woken.clear()
            due, wait = upkeep.next()
            if due is None:
                woken.wait(wait)
                continue
            self._drain(ws, upkeep)
            if (due := upkeep.next()[0]) is None:
                continue
            try:  # outside the lock: a provider may take a while
                message: Refresh | Ping = Refresh(token=self._credential()) if due == "refresh" else Ping()
            except Exception:
                log.warning("the token provider failed; the session's token runs on until it expires", exc_info=True)
                upkeep.failed()
                continue
            with self._lock:
                if upkeep.stopped:
                    return
                upkeep.sending(due)
                try:
                    ws.send(encode(message))
                except ConnectionClosed:
                    return  # the reader notices the drop

    def _drain(self, ws: SyncConnection, upkeep: _Upkeep) -> None:
        """As AsyncClient._drain: the upkeep's answers read while no caller reads."""
        if not self._reading.acquire(blocking=False):
            return
        try:
            while upkeep.awaiting and len(self._read_ahead) < READ_AHEAD and not upkeep.stopped:
                try:
                    message = _decode(ws.recv(timeout=0))
                except (TimeoutError, ConnectionClosed):
                    return
                if _ahead(message, upkeep):
                    self._read_ahead.append(message)
        finally:
            self._reading.release()
