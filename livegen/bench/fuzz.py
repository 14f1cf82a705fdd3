"""`livegen bench fuzz`: hostile and mutated messages over many sessions at once; nothing may be lost.

Each session sends a seeded mix, in both codecs: random bytes and text, random JSON and msgpack
structures (bin, ext types, non-string keys, NaN, huge integers), nesting thousands deep, any
Unicode (NUL, right-to-left marks, emoji, lone surrogates), mutations of valid messages (fields
removed, retyped, added), messages just over the size limit, and between them valid inputs:
generates (image-to-image with the similarity filter among them), exports of its own frames, and
spoken replies sent in pieces that split words and numbers, cancelled and barged in on.

Each session keeps its own ledger of what it is owed, read from each message by the server's own
parser: one final outcome per input id, one `error` with a null id per unreadable message. A
`cancelled` without `by` answers both the cancel and its utterance. Audio chunks are not final.
Beside the sessions, hostile bodies go to the HTTP endpoints. Counted, and all must be 0: sessions
closed by the server, inputs left unanswered (lost), answers beyond what was owed (duplicated),
outcomes that do not decode, HTTP 5xx, and HTTP 4xx without a JSON body. Writes fuzz.json and fuzz.md.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
from PIL import Image
from rich.progress import Progress
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from livegen.bench.report import header, machine_line, save
from livegen.client import stream_url
from livegen.protocol import (
    Cancel, Cancelled, Codec, Export, Generate, ProtocolError, Speak, decode_server_message, encode,
    parse_client_message,
)
from livegen.server.background import ServeProcess, free_port

FINAL = frozenset({"frame", "superseded", "skipped", "blocked", "exported", "error", "speech_end", "cancelled"})
IDLE_TIMEOUT_S = 60.0  # a session still owed answers that hears nothing for this long has lost them
OVERSIZED_EVERY = 2000  # one message in this many is just over the server's size limit
PROMPTS = ["a smiling cat", "a red apple", "a rocket", "a heart", "a sun with sunglasses"]
SENTENCES = ["Hello there, how are you today?", "The train leaves at 10:45 from platform 3.",
             "It costs 1,234 dollars, or about twelve hundred.", "Okay, done.",
             "Let me check that for you. One moment, please."]
NASTY = ["", "\x00", "\u202eevil", "\u200f\u05e9\u05dc\u05d5\u05dd", "👩‍👩‍👧‍👦", "e\u0301" * 40, "\ufeff",
         "\uffff", "\U0010ffff", "Alright, )))))))))))", "1234567890" * 20, "\n\t\r", "\x7f\x1b[31m",
         "\ud800", "a\udfffb", "x" * 600, "Ω" * 65, "[[[{{{", "\u0000\u0000", "null"]
# Code-point ranges to draw from: controls, Latin, combining marks, RTL marks, CJK, emoji, noncharacters.
RANGES = [(0, 0x1F), (0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x200B, 0x202E), (0x4E00, 0x4E80),
          (0x1F300, 0x1FAFF), (0xFFF0, 0xFFFF), (0x10FF00, 0x10FFFF)]
SURROGATES = (0xD800, 0xDFFF)  # JSON can spell them ("\ud800"); msgpack and WebSocket text cannot
FIELDS = ["type", "id", "prompt", "blend_prompt", "blend", "model", "seed", "steps", "width", "height", "guidance",
          "strength", "image", "similarity_filter", "format", "quality", "text", "final", "voice", "speed", "colour"]


def _png(rng: random.Random, side: int = 64) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (side, side, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class Hostile:
    """Draws messages: `rng` decides everything, so a seed replays a run."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.image = _png(rng)

    def text(self, codec: Codec | None = "json", size: int = 40) -> str:
        rng = self.rng
        if rng.random() < 0.3:
            text = rng.choice(NASTY)
        else:
            ranges = RANGES + ([SURROGATES] if codec == "json" else [])
            text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, size)))
        return text if codec == "json" else "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)

    def scalar(self, codec: Codec) -> Any:
        rng = self.rng
        choices = [None, rng.random() < 0.5, rng.randint(-2**63, 2**64 - 1), rng.choice([0, -1, 2**32, 2**53 + 1]),
                   rng.choice([float("nan"), float("inf"), -0.0, 1e308, 0.5]), self.text(codec)]
        if codec == "json":
            choices.append(10 ** rng.randint(20, 4000))  # Python's JSON takes up to 4300 digits
        else:
            choices += [rng.randbytes(rng.randint(0, 40)), msgpack.ExtType(rng.randint(0, 127), rng.randbytes(4)),
                        msgpack.Timestamp(rng.randint(0, 2**34 - 1))]
        return rng.choice(choices)

    def structure(self, codec: Codec, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth >= 4 or roll < 0.5:
            return self.scalar(codec)
        items = range(rng.randint(0, 4))
        if roll < 0.75:
            return [self.structure(codec, depth + 1) for _ in items]
        keys = [self.text(codec, 8) if codec == "json" else self.scalar(codec) for _ in items]
        return {k: self.structure(codec, depth + 1) for k in keys if isinstance(k, str | bytes | int)}

    def valid(self, kind: str, message_id: str, codec: Codec) -> dict:
        rng = self.rng
        if kind == "generate":
            fields: dict[str, Any] = {"prompt": rng.choice(PROMPTS), "seed": rng.randrange(2**32),
                                      "format": rng.choice(["jpeg", "png", "webp"])}
            if rng.random() < 0.3:
                image = self.image if codec == "msgpack" else base64.b64encode(self.image).decode()
                fields.update(image=image, strength=rng.uniform(0.2, 1.0), similarity_filter=0.98)
            if rng.random() < 0.2:
                fields.update(blend_prompt=rng.choice(PROMPTS), blend=rng.random())
            return {"type": "generate", "id": message_id, **fields}
        if kind == "speak":
            return {"type": "speak", "id": message_id, "text": rng.choice(SENTENCES), "final": True}
        return {"type": kind, "id": message_id}

    def mutated(self, codec: Codec, message_id: str) -> dict:
        """A valid message, then one to three fields removed, retyped or added."""
        rng = self.rng
        message = self.valid(rng.choice(["generate", "speak", "cancel", "export"]), message_id, codec)
        for _ in range(rng.randint(1, 3)):
            field = rng.choice(FIELDS)
            if field in message and rng.random() < 0.4:
                del message[field]
            else:
                message[field] = self.text(codec) if rng.random() < 0.3 else self.structure(codec)
        return message

    def deep(self, codec: Codec) -> bytes | str:
        """Lists or maps inside one another, built flat (the encoders recurse), whole or in a field."""
        rng = self.rng
        depth = rng.choice([rng.randint(1, 40), rng.randint(1000, 5000)])
        as_list = rng.random() < 0.5
        if codec == "json":
            inner = "[" * depth + "1" + "]" * depth if as_list else '{"a":' * depth + "1" + "}" * depth
            return inner if rng.random() < 0.2 else '{"type":"generate","id":"deep","prompt":' + inner + "}"
        inner_bytes = (b"\x91" * depth if as_list else b"\x81\xa1a" * depth) + b"\x01"
        head = msgpack.packb({"type": "generate", "id": "deep"})
        return inner_bytes if rng.random() < 0.2 else bytes([head[0] + 1]) + head[1:] + msgpack.packb("prompt") + inner_bytes

    def huge_number(self, message_id: str) -> str:
        """A number of up to 6,000 digits in a field: past 4,300 Python's JSON refuses to read it."""
        field = self.rng.choice(["seed", "steps", "guidance", "colour"])
        return f'{{"type":"generate","id":"{message_id}","prompt":"x","{field}":{"9" * self.rng.randint(300, 6000)}}}'

    def http_body(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return rng.randbytes(rng.randint(0, 300))
        if roll < 0.35:
            return self.deep("json").encode()
        if roll < 0.4:
            return self.huge_number("http").encode()
        message = self.mutated("json", "http") if roll < 0.85 else self.valid("generate", "http", "json")
        return json.dumps(message).encode()


def pack(value: Any, codec: Codec) -> bytes | str:
    return json.dumps(value) if codec == "json" else msgpack.packb(value, use_bin_type=True)


class Session:
    """One WebSocket session: sends its share, and counts what it is owed against what it is answered."""

    def __init__(self, number: int, url: str, messages: int, seed: int, sent: Callable[[], object] = lambda: None):
        self.number, self.url, self.messages, self.sent = number, url, messages, sent
        self.rng = random.Random(seed * 1000 + number)
        self.hostile = Hostile(self.rng)
        self.owed: Counter[str | None] = Counter()  # final outcomes owed, by id (None: unreadable messages)
        self.answered: Counter[str | None] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.error_codes: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.undecodable = 0
        self.crashed: str | None = None  # how the server closed the session, if it did
        self.frames: list[str] = []  # frame ids, for exports
        self.ids = (f"s{number}-{n}" for n in range(10**9))
        self.speech = False
        self.max_bytes = 0
        # Speech as far as this client can know what the server plays: the last utterance begun,
        # the rest of the scripted reply, and the utterances begun whose final piece never went out.
        self.current: str | None = None
        self.script: tuple[str, list[str]] | None = None
        self.open: set[str] = set()
        self.last_heard = time.monotonic()
        self.done_sending = self.done = 0.0  # perf_counter when its last message went out, and its last answer came
        self.requests: dict[str, str] = {}  # the last valid request of each id, to say what a lost one was

    async def run(self) -> None:
        try:
            async with connect(self.url, max_size=None, ping_interval=None) as socket:
                hello = decode_server_message(await socket.recv())
                self.speech, self.max_bytes = hello.speech is not None, hello.max_message_bytes
                receiving = asyncio.create_task(self.receive(socket))
                for _ in range(self.messages):
                    await socket.send(self.account(*self.draw()))
                    self.sent()
                self.done_sending = time.perf_counter()
                for utterance in sorted(self.open):  # nothing may be left playing at the end
                    await socket.send(self.account(msgpack.packb({"type": "cancel", "id": utterance}), "msgpack", True))
                while not self.settled() and time.monotonic() - self.last_heard < IDLE_TIMEOUT_S:
                    if receiving.done():
                        break
                    await asyncio.sleep(0.05)
                self.done = time.perf_counter()
                receiving.cancel()
        except ConnectionClosed as closed:
            self.crashed = f"closed by the server: {closed}"

    async def receive(self, socket: ClientConnection) -> None:
        """Counts every answer until the connection ends; an ending this client did not ask for is a crash."""
        try:
            async for data in socket:
                self.take(data)
        except ConnectionClosed:
            pass
        self.crashed = f"closed by the server with code {socket.close_code}"

    def take(self, data: bytes | str) -> None:
        try:
            outcome = decode_server_message(data)
        except ValueError:
            self.undecodable += 1
            return
        self.outcomes[outcome.type] += 1
        self.last_heard = time.monotonic()  # audio too: an utterance still being spoken is not lost
        if outcome.type not in FINAL:
            return
        if outcome.type == "error":
            self.error_codes[outcome.code] += 1
        if outcome.type == "frame":
            self.frames = [*self.frames[-7:], outcome.id]
        # A cancel answered `cancelled` answers its utterance too.
        self.answered[outcome.id] += 2 if isinstance(outcome, Cancelled) and outcome.by is None else 1

    def settled(self) -> bool:
        return all(self.answered[key] >= owed for key, owed in self.owed.items())

    def draw(self) -> tuple[bytes | str, Codec, bool]:
        """The next message, its codec, and whether it is a step of a scripted spoken reply."""
        rng = self.rng
        codec: Codec = rng.choice(["json", "msgpack"])
        if rng.randrange(OVERSIZED_EVERY) == 0:
            kind, data = "oversized", pack({"type": "generate", "id": next(self.ids), "prompt": "x" * self.max_bytes}, codec)
        else:
            kind = rng.choices(["bytes", "text", "structure", "number", "deep", "mutated", "unicode", "generate",
                                "export", "speech"], weights=[10, 8, 12, 2, 6, 22, 10, 14, 4, 12])[0]
            data = self.message(kind, codec)
        self.kinds[kind] += 1
        return data, "json" if isinstance(data, str) else "msgpack", kind == "speech"

    def message(self, kind: str, codec: Codec) -> bytes | str:
        rng, hostile = self.rng, self.hostile
        if kind == "bytes":
            return rng.randbytes(rng.randint(0, 300))
        if kind == "text":
            return hostile.text(None, 300)
        if kind == "structure":
            return pack(hostile.structure(codec), codec)
        if kind == "number":
            return hostile.huge_number(next(self.ids))
        if kind == "deep":
            return hostile.deep(codec)
        if kind == "mutated":
            return pack(hostile.mutated(codec, next(self.ids)), codec)
        if kind == "unicode":
            message = hostile.valid(rng.choice(["generate", "speak"]), next(self.ids), codec)
            message[rng.choice(["id", "prompt", "blend_prompt", "model", "text", "voice"])] = hostile.text(codec)
            return pack(message, codec)
        if kind == "generate":
            return pack(hostile.valid("generate", next(self.ids), codec), codec)
        if kind == "export":  # the same draws whatever frames came back, so that a seed replays the messages
            roll, pick, unknown = rng.random(), rng.random(), next(self.ids)
            frame = self.frames[int(pick * len(self.frames))] if self.frames and roll < 0.8 else unknown
            return pack({"type": "export", "id": frame}, codec)
        return pack(self.speech_step(), codec)

    def speech_step(self) -> dict:
        """The next step of a spoken reply: a piece (cut anywhere, even inside a word or a number), a cancel."""
        rng = self.rng
        if self.script is not None and self.script[0] == self.current:  # not barged in on since
            if rng.random() < 0.1:
                utterance, self.script = self.script[0], None
                return {"type": "cancel", "id": utterance}
            return self.next_piece()
        if self.current is not None and rng.random() < 0.15:  # late: it may still be playing, or be done
            return {"type": "cancel", "id": self.current}
        text = rng.choice(SENTENCES)
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 3)))
        self.script = (next(self.ids), [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
        return self.next_piece()

    def next_piece(self) -> dict:
        assert self.script is not None
        utterance, pieces = self.script
        piece = pieces.pop(0)
        if not pieces:
            self.script = None
        return {"type": "speak", "id": utterance, "text": piece, "final": not pieces}

    def account(self, data: bytes | str, codec: Codec, scripted: bool) -> bytes | str:
        """Count what `data` is owed, as the server reads it (the same parser). A speak or cancel that a
        mutation left valid gets a fresh id, so that it stands for itself, not for a scripted reply."""
        size = len(data.encode() if isinstance(data, str) else data)
        if size > self.max_bytes:
            self.owed[None] += 1
            return data
        try:
            request = parse_client_message(data)
        except ProtocolError as error:
            self.owed[error.id] += 1
            return data
        if isinstance(request, Speak | Cancel) and not scripted:
            request = request.model_copy(update={"id": next(self.ids)})
            data = encode(request, codec)
        self.expect(request)
        self.requests[request.id] = repr(request)[:160]
        return data

    def expect(self, request: Generate | Speak | Cancel | Export) -> None:
        if not self.speech or isinstance(request, Generate | Export):
            self.owed[request.id] += 1  # without a speech model, speak and cancel are each answered too
        elif isinstance(request, Cancel):
            self.owed[request.id] += 1
            self.open.discard(request.id)
            if request.id == self.current:
                self.current = None
        else:
            if request.id != self.current:  # a new utterance: the one playing is abandoned (barge-in)
                self.owed[request.id] += 1
                self.current = request.id
            (self.open.discard if request.final else self.open.add)(request.id)

    def unanswered(self) -> Counter[str | None]:
        return Counter({key: owed - self.answered[key] for key, owed in self.owed.items() if owed > self.answered[key]})

    def extra(self) -> Counter[str | None]:
        return Counter({key: n - self.owed[key] for key, n in self.answered.items() if n > self.owed[key]})

    def lost(self) -> int:
        return self.unanswered().total()

    def duplicated(self) -> int:
        return self.extra().total()


async def http_fuzz(base: str, requests: int, seed: int) -> Counter[str]:
    """Hostile bodies and paths to the HTTP endpoints: no 5xx, and each 4xx a JSON body."""
    rng = random.Random(seed)
    hostile = Hostile(rng)
    counts: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        for _ in range(requests):
            roll = rng.random()
            if roll < 0.15:
                path = rng.choice(["/v1/models", "/readyz", "/v1", "/static/", "/v1/stream", "/"])
                response = await client.get(path + rng.choice(["", "?x=" + rng.randbytes(8).hex(), "%00", "/..%2f.."]))
            else:
                response = await client.post("/v1/generate", content=hostile.http_body(),
                                             headers={"content-type": "application/json"})
            counts["requests"] += 1
            counts[f"{response.status_code // 100}xx"] += 1
            if 400 <= response.status_code < 500 and not _is_json_object(response):
                counts["client_errors_not_json"] += 1
    return counts


def _is_json_object(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


async def fuzz(ws_url: str, http_url: str, messages: int, sessions: int, seed: int) -> dict:
    with Progress() as progress:
        task = progress.add_task("messages sent", total=messages)
        everyone = [Session(n, ws_url, messages // sessions + (n < messages % sessions), seed,
                            lambda: progress.advance(task)) for n in range(sessions)]
        started = time.perf_counter()
        http, *_ = await asyncio.gather(http_fuzz(http_url, max(20, messages // 20), seed),
                                        *(session.run() for session in everyone))
        seconds = time.perf_counter() - started
    sent = sum(s.kinds.total() for s in everyone)
    sending = max(max(s.done_sending for s in everyone) - started, 1e-3)  # every session may have crashed
    answered = max(s.done for s in everyone) - started

    def total(counter: str) -> dict[str, int]:
        return dict(sum((getattr(s, counter) for s in everyone), Counter()).most_common())

    counts = {
        "crashed_sessions": sum(s.crashed is not None for s in everyone),
        "lost_outcomes": sum(s.lost() for s in everyone),
        "duplicated_outcomes": sum(s.duplicated() for s in everyone),
        "undecodable_outcomes": sum(s.undecodable for s in everyone),
        "http_5xx": http["5xx"],
        "http_4xx_not_json": http["client_errors_not_json"],
    }
    return {"messages": sent, "sessions": sessions, "seconds": round(seconds, 1), "sending_s": round(sending, 1),
            "answered_s": round(answered, 1), "messages_per_s": round(sent / sending, 1),
            "http_requests": http["requests"], "counts": counts,
            "passed": not any(counts.values()), "crashes": [s.crashed for s in everyone if s.crashed],
            # The ids to look for in the server's log, a few of each.
            "lost": [f"{key}: {s.requests.get(key, 'refused')}" for s in everyone for key in s.unanswered()][:20],
            "duplicated": [f"{key}: {s.requests.get(key, 'refused')}" for s in everyone for key in s.extra()][:20],
            "kinds": total("kinds"), "outcomes": total("outcomes"), "error_codes": total("error_codes")}


def run(url: str | None, messages: int, sessions: int, seed: int, output: Path) -> dict:
    """Against `url`, or a `livegen serve` of its own (the embedded model and speech, default limits)."""
    server = None if url else ServeProcess(free_port())
    base = (url or server.url).rstrip("/")  # type: ignore[union-attr]
    http_url = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1).removesuffix("/v1/stream")
    try:
        results = asyncio.run(fuzz(stream_url(base), http_url, messages, sessions, seed))
    finally:
        if server is not None:
            server.kill()
    results = {**header("fuzz"), "server": url or "livegen serve (embedded model and speech)", "seed": seed,
               **results}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    lines = [f"{r['messages']} messages over {r['sessions']} sessions, sent in {r['sending_s']} s "
             f"({r['messages_per_s']} messages/s), every answer in {r['answered_s']} s; {r['http_requests']} HTTP "
             f"requests beside them, {r['seconds']} s in all. Seed {r['seed']}, against {r['server']}; "
             f"{machine_line(r['machine'])}. Every count must be 0.", "",
             "| count | value |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {value} |" for name, value in r["counts"].items()]
    lines += ["", "Outcomes: " + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()) + ".",
              "Error codes: " + ", ".join(f"{k} {v}" for k, v in r["error_codes"].items()) + "."]
    lines += [f"Crashed: {crash}" for crash in r["crashes"]]
    lines += [f"Lost: {lost}" for lost in r["lost"]] + [f"Duplicated: {extra}" for extra in r["duplicated"]]
    return "\n".join(lines) + "\n"
