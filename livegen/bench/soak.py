"""`livegen bench soak`: many sessions doing everything at once; nothing may be lost, nothing may grow.

64 WebSocket sessions for 60 s (8 for 8 s with --quick) against a `livegen serve` of its own (the
embedded model and speech, default limits) or a running server (--url). Each plays a role, in a
cycle of eight:
- prompt (2 of 8): random text-to-image prompts every 0.2-1 s, a few that moderation blocks, and
  now and then an export of its latest frame;
- camera (3 of 8): image-to-image frames (96x96 JPEG or PNG, a still scene or a panning one), 8 a
  second, half of the connections with the similarity filter;
- voice (1 of 8): spoken replies, whole or streamed in pieces (`final=False` until the last), each
  heard out as it plays and followed by the user's turn (1-4 s); some cut a moment after their
  first audio by the next reply (barge-in), some cancelled;
- dropper (1 of 8): any of those, then closes its socket with inputs outstanding (a close frame,
  or the TCP connection cut without one) and opens a new one, every 1.5-5 s;
- slow reader (1 of 8): prompts and camera frames, reading its socket only every 1-4 s.
Every session also ends its connection cleanly every 12-24 s and reconnects: it stops sending,
waits for every answer it is owed, and closes.

Each connection keeps a ledger: one final outcome owed per input (frame, superseded, skipped,
blocked, exported, error, speech_end or cancelled; `audio` is not final; a `cancelled` without
`by` answers both a cancel and its utterance). Targets: unanswered inputs (owed on a connection
that stayed open until it ended cleanly, once the server has sent nothing to anyone for 30 s) 0;
duplicated outcomes 0; connections closed by the server
or never reopened 0; the server's resident memory (VmRSS, sampled every second; only for a server of
its own) grows at most 5% from the first sample after the warm-up to the end; event-loop lag p99
(the server's `livegen_event_loop_lag_seconds` buckets at the end minus at the start, read as the
upper bound of the p99's bucket) at most 50 ms; HTTP 5xx (the bench's /readyz and /metrics reads)
0. Recorded beside them: frame latency (input sent to its frame, slow readers left out: their
delay is their own), time to first audio (first piece sent to first chunk), frames per second over
the measured time and every outcome. Writes soak.json, soak.md and soak.png.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import matplotlib.pyplot as plt
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from livegen.bench.camera import camera_frames
from livegen.bench.report import Series, header, machine_line, save
from livegen.client import stream_url
from livegen.protocol import (
    Audio, Cancel, Cancelled, Codec, Export, Generate, Hello, Speak, decode_server_message, encode,
)
from livegen.server.background import ServeProcess, free_port

ROLES = ("prompt", "camera", "voice", "dropper", "prompt", "camera", "slow reader", "camera")
FINAL = frozenset({"frame", "superseded", "skipped", "blocked", "exported", "error", "speech_end", "cancelled"})
MEMORY_GROWTH_LIMIT_PCT = 5.0
LAG_P99_LIMIT_MS = 50.0
TARGETS = {
    "unanswered": "unanswered inputs: 0",
    "duplicated": "duplicated outcomes: 0",
    "connections": "connections closed by the server or never reopened: 0",
    "memory": f"server resident memory growth after warm-up: at most {MEMORY_GROWTH_LIMIT_PCT:g}%",
    "event_loop_lag": f"server event-loop lag p99: at most {LAG_P99_LIMIT_MS:g} ms",
    "http_5xx": "HTTP 5xx: 0",
}
LAG_HISTOGRAM = "livegen_event_loop_lag_seconds"
# An input still owed after the server has sent nothing to anyone for this long is lost. The whole
# server's silence, not the connection's: under load a session's turn can be further away than that.
IDLE_TIMEOUT_S = 30.0
RECONNECT_BUDGET_S = 30.0  # a session that cannot open a new connection for this long is lost
HELLO_TIMEOUT_S = 10.0
CAMERA_FPS = 8  # the playground's throttle sends about this many
SIMILARITY_FILTER = 0.98

COLOURS = ["red", "blue", "golden", "green", "purple", "orange", "pink", "silver", "black", "white"]
SUBJECTS = ["cat", "fox", "rocket", "apple", "heart", "sun", "tree", "car", "robot", "house", "fish", "star",
            "ghost", "dragon", "flower"]
STYLES = ["", "smiling", "in the rain", "at night", "on a hill", "made of glass", "with sunglasses", "sleeping"]
BLOCKED_PROMPTS = ["a gory battlefield", "an nsfw poster"]  # terms in livegen's own moderation policy
REPLIES = [
    "Sure, I can help with that.",
    "Your table for two is booked for seven thirty tonight. You will get a confirmation by text.",
    "Hmm, let me check. The next train leaves at ten past nine from platform four.",
    "Good question. The short answer is yes, but it depends on your plan.",
    "Okay, done.",
    "I found three flights. The cheapest one stops in Frankfurt and arrives at noon.",
]
REPLY_MODES = {"whole": 3, "pieces": 3, "barge-in": 2, "cancel": 2}


def describe(request: Generate | Speak | Cancel | Export) -> str:
    """A request in a few words, image bytes left out."""
    if isinstance(request, Generate):
        return f"generate {request.prompt!r}" + (f" image, filter {request.similarity_filter}" if request.image else "")
    if isinstance(request, Speak):
        return f"speak {request.text!r} final={request.final}"
    return request.type


def camera_scenes() -> dict[str, list[bytes]]:
    """Input frames by scene and format: a still scene (sensor noise only) and a panning one."""
    scenes = {"still": camera_frames(8, moving=False, side=96), "panning": camera_frames(24, moving=True, side=96)}

    def png(jpeg: bytes) -> bytes:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(jpeg)).save(buffer, "PNG")
        return buffer.getvalue()

    return {**{f"{name} jpeg": frames for name, frames in scenes.items()},
            **{f"{name} png": [png(f) for f in frames] for name, frames in scenes.items()}}


@dataclass
class Totals:
    """What every session adds to, on the one event loop."""

    counts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # failed attempts to open a connection, by cause
    unanswered: list[str] = field(default_factory=list)  # what each unanswered input was, to chase it
    frame_latency: Series = field(default_factory=lambda: Series("frame latency"))
    ttfa: Series = field(default_factory=lambda: Series("time to first audio"))
    frame_times: list[float] = field(default_factory=list)
    last_heard: float = field(default_factory=time.monotonic)  # the latest message from the server to anyone


class Connection:
    """One socket's life: what was sent on it, what it is owed, and what it was answered."""

    def __init__(self, ws: ClientConnection, prefix: str, codec: Codec, totals: Totals, times_frames: bool,
                 speech: bool):
        self.ws, self.codec, self.totals, self.times_frames = ws, codec, totals, times_frames
        self.speech = speech  # without a speech model, every speak piece is answered (`no_speech_model`)
        self.ids = (f"{prefix}-{n}" for n in itertools.count())
        self.owed: Counter[str] = Counter()
        self.requests: dict[str, list[str]] = {}  # id -> what went out under it, for the report of what was lost
        self.answered: Counter[str] = Counter()
        self.sent_at: dict[str, float] = {}  # generate id -> when it went out
        self.spoken_at: dict[str, float] = {}  # utterance id -> when its first piece went out
        self.heard_at: dict[str, float] = {}  # utterance id -> when its first audio came
        self.audio_s: Counter[str] = Counter()  # utterance id -> seconds of its audio received
        self.last_frame: str | None = None
        self.last_utterance: str | None = None
        self.receiver: asyncio.Task | None = None
        self.closing = False  # set by every ending this client chooses: a drop, the end of its phase

    async def send(self, request: Generate | Speak | Cancel | Export, owes_answer: bool = True) -> None:
        now = time.perf_counter()
        if owes_answer or not self.speech:
            self.owed[request.id] += 1
        if isinstance(request, Generate):
            self.sent_at[request.id] = now
        elif isinstance(request, Speak) and owes_answer:  # an utterance's first piece
            self.spoken_at[request.id] = now
            self.last_utterance = request.id
        self.totals.counts[f"sent {request.type}"] += 1
        self.requests.setdefault(request.id, []).append(describe(request))
        await self.ws.send(encode(request, self.codec))

    def start_receiving(self, rng: random.Random, slow: bool) -> None:
        self.receiver = asyncio.create_task(self.receive(rng, slow))

    async def receive(self, rng: random.Random, slow: bool) -> None:
        """Counts every message until the socket ends; a slow reader naps every ten or so."""
        try:
            async for data in self.ws:
                self.take(data)
                if slow and rng.random() < 0.1:
                    await asyncio.sleep(rng.uniform(1, 4))
        except ConnectionClosed:
            pass

    @property
    def ended(self) -> bool:
        return self.receiver is not None and self.receiver.done()

    def take(self, data: bytes | str) -> None:
        now, totals = time.perf_counter(), self.totals
        totals.last_heard = time.monotonic()
        try:
            outcome = decode_server_message(data)
        except ValueError:
            totals.counts["undecodable"] += 1
            return
        totals.outcomes[outcome.type] += 1
        if isinstance(outcome, Audio):
            if outcome.id not in self.heard_at:
                self.heard_at[outcome.id] = now
                totals.ttfa.ms.append((now - self.spoken_at[outcome.id]) * 1000)
            self.audio_s[outcome.id] += len(outcome.pcm) / 2 / outcome.sample_rate
            return
        if outcome.type not in FINAL:  # a second hello: nothing is owed to it
            totals.counts["unexpected"] += 1
            return
        if outcome.type == "error":
            totals.error_codes[outcome.code] += 1
        if outcome.type == "frame":
            self.last_frame = outcome.id
            totals.frame_times.append(now)
            if self.times_frames and (sent := self.sent_at.get(outcome.id)) is not None:
                totals.frame_latency.ms.append((now - sent) * 1000)
        self.answered[outcome.id] += 2 if isinstance(outcome, Cancelled) and outcome.by is None else 1

    def outstanding(self) -> int:
        return sum(max(0, owed - self.answered[key]) for key, owed in self.owed.items())

    def duplicated(self) -> int:
        return sum(max(0, count - self.owed[key]) for key, count in self.answered.items())

    def owes(self, key: str) -> bool:
        return self.answered[key] < self.owed[key]

    def playing_s(self, utterance: str) -> float:
        """How much of the utterance's audio is still to play, for a listener who plays it as it comes."""
        if utterance not in self.heard_at:
            return 0.0
        return max(0.0, self.heard_at[utterance] + self.audio_s[utterance] - time.perf_counter())

    def unanswered(self) -> list[str]:
        return [f"{key}: {' / '.join(self.requests[key])}; {self.answered[key]} of {owed} answers"
                for key, owed in self.owed.items() if self.answered[key] < owed]


class Soaker:
    """One session of the soak: connection after connection in its role until the soak ends."""

    def __init__(self, number: int, url: str, seed: int, seconds: float, stop_at: float, totals: Totals,
                 scenes: dict[str, list[bytes]]):
        self.number, self.url, self.seconds, self.stop_at = number, url, seconds, stop_at
        self.role = ROLES[number % len(ROLES)]
        self.rng = random.Random(seed * 1000 + number)
        self.totals, self.scenes = totals, scenes
        self.connections = itertools.count()

    async def run(self) -> None:
        while time.perf_counter() < self.stop_at:
            try:
                ws, hello = await self.open()
            except ConnectionError:
                self.totals.counts["connect gave up"] += 1
                return
            await self.phase(ws, hello)

    async def open(self) -> tuple[ClientConnection, Hello]:
        """A new connection and its hello, retried with backoff while the server says come back later
        (too_many_sessions, say, while it has not yet closed this session's last connection)."""
        delay, give_up_at = 0.1, time.monotonic() + RECONNECT_BUDGET_S
        while True:
            try:
                ws = await connect(self.url, max_size=None, ping_interval=None)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                refusal = type(exc).__name__
            else:
                greeting = await self.greeting(ws)
                if isinstance(greeting, Hello):
                    self.totals.counts["connections"] += 1
                    return ws, greeting
                refusal = greeting
                await ws.close()
            self.totals.refused[refusal] += 1
            if time.monotonic() > give_up_at:
                raise ConnectionError(f"session {self.number} could not reconnect in {RECONNECT_BUDGET_S} s")
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
            delay = min(1.0, delay * 2)

    @staticmethod
    async def greeting(ws: ClientConnection) -> Hello | str:
        """The server's hello; else why not: its error's code, or what went wrong."""
        try:
            message = decode_server_message(await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S))
        except (TimeoutError, ConnectionClosed, ValueError) as exc:
            return type(exc).__name__
        return message if isinstance(message, Hello) else getattr(message, "code", message.type)

    async def phase(self, ws: ClientConnection, hello: Hello) -> None:
        rng, counts = self.rng, self.totals.counts
        dropper = self.role == "dropper"
        length = rng.uniform(0.025, 0.08) if dropper else rng.uniform(0.2, 0.4)
        until = min(self.stop_at, time.perf_counter() + length * self.seconds)
        codec: Codec = "json" if rng.random() < 0.3 else "msgpack"
        conn = Connection(ws, f"s{self.number}c{next(self.connections)}", codec, self.totals,
                          times_frames=self.role != "slow reader", speech=hello.speech is not None)
        conn.start_receiving(rng, slow=self.role == "slow reader")
        try:
            await self.act(conn, until)
            if dropper and time.perf_counter() < self.stop_at:
                await self.drop(conn)
            else:
                await self.settle(conn)
        except ConnectionClosed:
            pass  # a send met a socket the server closed
        finally:
            if not conn.closing:
                counts["closed by server"] += 1
            await ws.close()
            conn.receiver.cancel()  # type: ignore[union-attr]
            counts["duplicated"] += conn.duplicated()

    async def act(self, conn: Connection, until: float) -> None:
        """Send as the role does until the phase ends; a dropper and a slow reader pick an act each time."""
        camera = self.camera(conn)
        while time.perf_counter() < until:
            if self.role == "dropper":
                act = self.rng.choice(["prompt", "camera", "voice"])
            elif self.role == "slow reader":
                act = self.rng.choice(["prompt", "camera"])
            else:
                act = self.role
            if act == "prompt":
                await self.prompt(conn)
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            elif act == "camera":
                await conn.send(next(camera))
                await asyncio.sleep(1 / CAMERA_FPS)
            else:
                await self.reply(conn, until)
                await asyncio.sleep(self.rng.uniform(1.0, 4.0))  # the user's turn to speak

    async def prompt(self, conn: Connection) -> None:
        rng = self.rng
        if conn.last_frame is not None and rng.random() < 0.1:
            await conn.send(Export(id=conn.last_frame))
        text = (rng.choice(BLOCKED_PROMPTS) if rng.random() < 0.03 else
                f"a {rng.choice(COLOURS)} {rng.choice(SUBJECTS)} {rng.choice(STYLES)}".strip())
        await conn.send(Generate(id=next(conn.ids), prompt=text, seed=rng.randrange(2**32)))

    def camera(self, conn: Connection) -> Iterator[Generate]:
        """This connection's camera: one scene and format, the filter on or off, frame after frame."""
        frames = self.scenes[self.rng.choice(sorted(self.scenes))]
        similarity = SIMILARITY_FILTER if self.rng.random() < 0.5 else None
        for image in itertools.cycle(frames):
            yield Generate(id=next(conn.ids), prompt="a smiling cat", image=image, strength=0.5,
                           similarity_filter=similarity)

    async def reply(self, conn: Connection, until: float, mode: str | None = None) -> None:
        """One spoken reply, whole or in pieces as a language model streams it, heard out as it plays; or
        cut a moment after its first audio by the next reply (barge-in) or by a cancel."""
        rng, counts = self.rng, self.totals.counts
        mode = mode or rng.choices(list(REPLY_MODES), weights=list(REPLY_MODES.values()))[0]
        counts[f"replies {mode}"] += 1
        if conn.last_utterance is not None and conn.owes(conn.last_utterance):
            counts["replies cutting in"] += 1  # the last still owed its end: a barge-in, unless it ends first
        utterance, text = next(conn.ids), rng.choice(REPLIES)
        words = text.split(" ")
        pieces_wanted = 1 if mode == "whole" else rng.randint(3, 6)
        cuts = sorted(rng.sample(range(1, len(words)), min(len(words), pieces_wanted) - 1))
        pieces = [" ".join(words[a:b]) + " " for a, b in zip([0, *cuts], [*cuts, len(words)])]
        for n, piece in enumerate(pieces):
            if n:
                await asyncio.sleep(rng.uniform(0.05, 0.15))
            await conn.send(Speak(id=utterance, text=piece, final=n == len(pieces) - 1), owes_answer=n == 0)
        if mode in ("barge-in", "cancel"):
            await self.wait(conn, lambda: utterance in conn.heard_at or not conn.owes(utterance), until)
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            if mode == "barge-in":
                await self.reply(conn, until, rng.choice(["whole", "pieces"]))  # cuts this one, unless it ended
                return
            await conn.send(Cancel(id=utterance))
        await self.wait(conn, lambda: not conn.owes(utterance), until)  # the phase's end waits for the rest
        await asyncio.sleep(min(conn.playing_s(utterance), max(0.0, until - time.perf_counter())))

    async def drop(self, conn: Connection) -> None:
        """Leave with inputs outstanding: one more input, then a close frame or the connection cut."""
        await self.prompt(conn)
        conn.closing = True
        self.totals.counts["outstanding at drops"] += conn.outstanding()
        if self.rng.random() < 0.5:
            self.totals.counts["drops, closed"] += 1
            await conn.ws.close()
        else:
            self.totals.counts["drops, cut"] += 1
            conn.ws.transport.abort()  # no close frame: what a lost network looks like to the server

    async def settle(self, conn: Connection) -> None:
        """The end of a phase: nothing more is sent; every answer owed must come."""
        await self.wait(conn, lambda: conn.outstanding() == 0)
        if conn.ended:
            return  # the server closed it: what it still owed counts as a connection the server closed
        self.totals.counts["unanswered"] += conn.outstanding()
        self.totals.unanswered += [f"{self.role}: {line}" for line in conn.unanswered()]
        self.totals.counts["settled connections"] += 1
        conn.closing = True

    async def wait(self, conn: Connection, done: Callable[[], bool], until: float = math.inf) -> None:
        """Until `done()`, the socket ends, `until`, or IDLE_TIMEOUT_S of this wait with the server silent."""
        started = time.monotonic()
        while (not done() and not conn.ended and time.perf_counter() < until
               and time.monotonic() - max(self.totals.last_heard, started) < IDLE_TIMEOUT_S):
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- the server's side


def resident_mb(pid: int) -> float:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc: how much of the shared cores it got."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lag_histogram(metrics_text: str) -> dict[str, float]:
    """The lag histogram's cumulative bucket counts by upper bound ('0.05', '+Inf'), and its sum."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == LAG_HISTOGRAM:
            buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
            return {**buckets, "sum": next(s.value for s in family.samples if s.name.endswith("_sum"))}
    return {}


def lag_between(before: dict[str, float], after: dict[str, float]) -> dict | None:
    """Observations, mean, and the upper bounds of the buckets holding the p50, p99 and the worst beat."""
    if not after:
        return None  # a server without the histogram
    bounds = sorted((b for b in after if b != "sum"), key=float)
    counts = {b: after[b] - before.get(b, 0) for b in bounds}
    total = counts["+Inf"]
    if not total:
        return None

    def bound_ms(rank: float) -> float:
        return round(float(next(b for b in bounds if counts[b] >= rank)) * 1000, 3)

    return {"observations": int(total), "mean_ms": round((after["sum"] - before.get("sum", 0)) / total * 1000, 2),
            "p50_ms": bound_ms(math.ceil(0.5 * total)), "p99_ms": bound_ms(math.ceil(0.99 * total)),
            "max_ms": bound_ms(total)}


class ServerWatch:
    """Every second: the server's resident memory (if it is ours) and /readyz; /metrics on demand."""

    def __init__(self, http: httpx.AsyncClient, pid: int | None):
        self.http, self.pid = http, pid
        self.started = time.perf_counter()  # reset as the sessions start
        self.memory: list[tuple[float, float]] = []  # (s since start, MB)
        self.status: Counter[str] = Counter()

    async def get(self, path: str) -> httpx.Response:
        self.status["requests"] += 1
        response = await self.http.get(path)
        self.status[f"{response.status_code // 100}xx"] += 1
        if path == "/readyz" and response.status_code != 200:
            self.status["readyz not 200"] += 1
        return response

    def sample(self) -> None:
        if self.pid is not None:
            self.memory.append((time.perf_counter() - self.started, resident_mb(self.pid)))

    async def run(self) -> None:
        while True:
            self.sample()
            try:
                await self.get("/readyz")
            except httpx.HTTPError:
                self.status["unreachable"] += 1
            await asyncio.sleep(1.0)

    async def lag(self) -> dict[str, float]:
        return lag_histogram((await self.get("/metrics")).text)

    async def open_sessions(self) -> int:
        """The server's session gauge once the clients have gone (closing takes a moment)."""
        for _ in range(50):
            families = text_string_to_metric_families((await self.get("/metrics")).text)
            left = next(int(f.samples[0].value) for f in families if f.name == "livegen_sessions")
            if not left:
                return 0
            await asyncio.sleep(0.1)
        return left


def memory_growth(samples: list[tuple[float, float]], warmup_s: float) -> dict | None:
    """The first sample after the warm-up against the last one (taken as the load stopped)."""
    if not samples:
        return None
    warm = next((mb for t, mb in samples if t >= warmup_s), samples[-1][1])
    end = samples[-1][1]
    return {"start_mb": round(samples[0][1], 1), "after_warmup_mb": round(warm, 1), "end_mb": round(end, 1),
            "peak_mb": round(max(mb for _, mb in samples), 1), "growth_pct": round((end - warm) / warm * 100, 2)}


# ---------------------------------------------------------------------- the run


async def soak(ws_url: str, http_url: str, pid: int | None, sessions: int, seconds: float, warmup_s: float,
               seed: int) -> dict:
    totals, scenes = Totals(), camera_scenes()
    async with httpx.AsyncClient(base_url=http_url, timeout=30) as http:
        watch = ServerWatch(http, pid)
        lag_before = await watch.lag()
        cpu_before = (time.process_time(), cpu_seconds(pid) if pid else None)
        watch.started = started = time.perf_counter()
        stop_at = started + seconds
        everyone = [Soaker(n, ws_url, seed, seconds, stop_at, totals, scenes) for n in range(sessions)]
        running = [asyncio.create_task(s.run()) for s in everyone]
        watching = asyncio.create_task(watch.run())
        await asyncio.sleep(stop_at - time.perf_counter())
        load_s = time.perf_counter() - started  # measured: the loop may wake late
        watching.cancel()
        watch.sample()
        cores = {"bench client": round((time.process_time() - cpu_before[0]) / load_s, 2),
                 "server": round((cpu_seconds(pid) - cpu_before[1]) / load_s, 2) if pid else None}
        lag = lag_between(lag_before, await watch.lag())
        await asyncio.gather(*running)
        settle_s = time.perf_counter() - started - load_s
        open_after = await watch.open_sessions()
    counts = totals.counts
    frames_in_window = sum(t <= started + load_s for t in totals.frame_times)
    return {
        "sessions": sessions, "roles": dict(Counter(s.role for s in everyone)), "nominal_seconds": seconds,
        "warmup_s": warmup_s, "elapsed_s": round(load_s, 2), "settle_s": round(settle_s, 2),
        "frames_per_s": round(frames_in_window / load_s, 1),
        "frame_latency": totals.frame_latency.summary() if totals.frame_latency.ms else None,
        "ttfa": totals.ttfa.summary() if totals.ttfa.ms else None,
        "counts": {key: counts[key] for key in ("unanswered", "duplicated", "closed by server", "connect gave up",
                                                "undecodable", "unexpected")},
        "connections": {"opened": counts["connections"], "settled": counts["settled connections"],
                        "dropped with a close frame": counts["drops, closed"],
                        "dropped by cutting the connection": counts["drops, cut"],
                        "inputs outstanding at the drops": counts["outstanding at drops"],
                        "refused or failed attempts": dict(totals.refused), "server sessions open after": open_after},
        "sent": {key.removeprefix("sent "): n for key, n in sorted(counts.items()) if key.startswith("sent ")},
        "replies": {key.removeprefix("replies "): n for key, n in sorted(counts.items()) if key.startswith("replies ")},
        "outcomes": dict(totals.outcomes.most_common()), "error_codes": dict(totals.error_codes.most_common()),
        "unanswered_inputs": totals.unanswered,
        "memory": memory_growth(watch.memory, warmup_s), "memory_samples": watch.memory, "cpu_cores_used": cores,
        "event_loop_lag": lag,
        "http": {key: watch.status[key] for key in ("requests", "5xx", "readyz not 200", "unreachable")},
        "frames_per_second_timeline": timeline(totals.frame_times, started),
    }


def timeline(times: list[float], started: float) -> list[int]:
    """Frames received in each second of the soak."""
    seconds = Counter(int(t - started) for t in times)
    return [seconds[s] for s in range(max(seconds, default=-1) + 1)]


def verdicts(r: dict) -> dict[str, bool | None]:
    """Each of TARGETS met (True), not met (False) or not measured (None)."""
    counts, memory, lag = r["counts"], r["memory"], r["event_loop_lag"]
    return {
        "unanswered": counts["unanswered"] == 0,
        "duplicated": counts["duplicated"] == 0,
        "connections": counts["closed by server"] == 0 and counts["connect gave up"] == 0,
        "memory": None if memory is None else memory["growth_pct"] <= MEMORY_GROWTH_LIMIT_PCT,
        "event_loop_lag": None if lag is None else lag["p99_ms"] <= LAG_P99_LIMIT_MS,
        "http_5xx": r["http"]["5xx"] == 0,
    }


def run(url: str | None, serve_args: list[str], sessions: int, seconds: float, warmup_s: float, seed: int,
        output: Path) -> dict:
    """Against `url`, or a `livegen serve` of its own with `serve_args` (by default the embedded model and speech)."""
    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine shows here
    server = None if url else ServeProcess(free_port(), serve_args)
    base = (url or server.url).rstrip("/")  # type: ignore[union-attr]
    http_url = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1).removesuffix("/v1/stream")
    try:
        results = asyncio.run(soak(stream_url(base), http_url, server.process.pid if server else None, sessions,
                                   seconds, warmup_s, seed))
    finally:
        if server is not None:
            server.kill()
    served = f"`{' '.join(['livegen serve', *serve_args])}` (speech on)"
    results = {**header("soak"), "server": url or served, "seed": seed, **results}
    results["load_average"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    results["verdicts"] = verdicts(results)
    results["passed"] = False not in results["verdicts"].values()
    save(results, markdown(results), output)
    plot(results, output / "soak.png")
    return results


def markdown(r: dict) -> str:
    met = {True: "met", False: "**not met**", None: "not measured"}
    memory, lag, latency, ttfa = r["memory"], r["event_loop_lag"], r["frame_latency"], r["ttfa"]
    measured = [
        str(r["counts"]["unanswered"]), str(r["counts"]["duplicated"]),
        f"{r['counts']['closed by server']} closed, {r['counts']['connect gave up']} never reopened",
        "-" if memory is None else f"{memory['growth_pct']}% ({memory['after_warmup_mb']} -> {memory['end_mb']} MB)",
        "-" if lag is None else f"{lag['p99_ms']:g} ms (bucket bound; {lag['observations']} beats, "
                                f"mean {lag['mean_ms']} ms, worst <= {lag['max_ms']:g} ms)",
        f"{r['http']['5xx']} of {r['http']['requests']}"]
    lines = [f"{r['sessions']} sessions ({', '.join(f'{n} {role}' for role, n in r['roles'].items())}) for "
             f"{r['elapsed_s']} s measured ({r['nominal_seconds']:g} s asked, warm-up {r['warmup_s']:g} s; "
             f"settling after: {r['settle_s']} s) against {r['server']}, seed {r['seed']}; "
             f"{machine_line(r['machine'])}; load average (1, 5, 15 min) {r['load_average']['before']} before the "
             f"server started, {r['load_average']['after']} after the soak.", "",
             "| target | measured | |", "|---|---|---|"]
    lines += [f"| {TARGETS[key]} | {value} | {met[ok]} |" for (key, ok), value in zip(r["verdicts"].items(), measured)]
    c = r["connections"]
    lines += ["", f"- frames/s (all sessions): **{r['frames_per_s']}**",
              "- frame latency, input sent to its frame: " + (
                  "none" if latency is None else f"p50 **{latency['p50_ms']} ms**, p99 {latency['p99_ms']} ms "
                                                 f"({latency['n']} frames)"),
              "- time to first audio: " + (
                  "none" if ttfa is None else f"p50 **{ttfa['p50_ms']} ms**, p99 {ttfa['p99_ms']} ms "
                                              f"({ttfa['n']} utterances)"),
              "- outcomes: " + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()),
              "- error codes: " + (", ".join(f"{k} {v}" for k, v in r["error_codes"].items()) or "none"),
              "- sent: " + ", ".join(f"{k} {v}" for k, v in r["sent"].items()),
              "- replies: " + ", ".join(f"{k} {v}" for k, v in r["replies"].items()),
              f"- connections: {c['opened']} opened, {c['settled']} ended cleanly, {c['dropped with a close frame']} "
              f"dropped with a close frame and {c['dropped by cutting the connection']} cut, with "
              f"{c['inputs outstanding at the drops']} inputs outstanding; refused or failed attempts: "
              + (", ".join(f"{k} {v}" for k, v in c["refused or failed attempts"].items()) or "none")
              + f"; server sessions open afterwards: {c['server sessions open after']}",
              f"- HTTP: {r['http']['requests']} requests, {r['http']['readyz not 200']} /readyz not 200, "
              f"{r['http']['unreachable']} unreachable"]
    lines += [f"- unanswered: {line}" for line in r["unanswered_inputs"]]
    if memory is not None:
        lines.append(f"- server resident memory: {memory['start_mb']} MB at the start, peak {memory['peak_mb']} MB")
    cores = r["cpu_cores_used"]
    lines.append(f"- CPU cores used on average while the sessions sent: bench client {cores['bench client']}"
                 + (f", server {cores['server']}" if cores["server"] is not None else ""))
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    """Frames per second and the server's resident memory, second by second."""
    fig, (fps_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    fps_ax.plot(range(len(r["frames_per_second_timeline"])), r["frames_per_second_timeline"])
    fps_ax.set(xlabel="s since the start", ylabel="frames received per second")
    if r["memory_samples"]:
        memory_ax.plot(*zip(*r["memory_samples"]))
    memory_ax.set(xlabel="s since the start", ylabel="server resident memory (MB)")
    for ax in (fps_ax, memory_ax):
        ax.axvline(r["warmup_s"], color="grey", linestyle="--", linewidth=1)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"soak: {r['sessions']} sessions; the dashed line ends the warm-up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
