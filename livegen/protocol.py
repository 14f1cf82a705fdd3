"""Wire messages of the livegen protocol, their codecs and the JSON Schema users read.

One pydantic model per message type. Binary WebSocket messages are msgpack maps, text messages
are JSON objects; both carry the same fields. Image bytes travel as msgpack `bin` or, in JSON,
as base64 strings.
"""

from __future__ import annotations

import base64
import io
import json
import reprlib
import wave
from typing import Annotated, Any, Literal

import msgpack
from msgpack.exceptions import StackError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    PlainSerializer,
    ValidationError,
)

PROTOCOL_VERSION = 1

# Hard limits that hold for every server; per-server limits (sizes, message bytes) live in config.
MAX_ID_CHARS = 64
MAX_STEPS = 8
MAX_SIDE = 2048
MAX_SEED = 2**32 - 1
# No field takes a map or a list, so deeper nesting is never valid; the limit is the same on both
# codecs and keeps every later step (validation, error messages) away from recursion.
MAX_NESTING = 32


def _bytes_from_wire(value: Any) -> Any:
    """JSON carries bytes as base64 text; msgpack carries them as bin."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError("image must be base64 text in JSON messages") from exc
    return value


# Standard base64 in JSON both ways (what browsers' btoa/atob speak); raw bytes in msgpack.
WireBytes = Annotated[
    bytes,
    BeforeValidator(_bytes_from_wire),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
]
ImageFormat = Literal["jpeg", "webp", "png"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


# ---------------------------------------------------------------- client -> server


class Generate(Message):
    """Ask for one image. A newer `generate` from the same session replaces a waiting one."""

    type: Literal["generate"] = "generate"
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="Client-chosen id; outcomes name it.")
    prompt: str = Field(description="Text prompt; the server's max_prompt_chars applies.")
    blend_prompt: str | None = Field(default=None, description="Second prompt to morph towards.")
    blend: float = Field(default=0.0, ge=0.0, le=1.0,
                         description="0: `prompt` alone, 1: `blend_prompt` alone; embeddings are interpolated.")
    model: str | None = Field(default=None, description="Model name from /v1/models; default model if absent.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Noise seed; the session's own if absent.")
    steps: int = Field(default=1, ge=1, le=MAX_STEPS)
    width: int = Field(default=0, ge=0, le=MAX_SIDE, description="0 means the model's first served size.")
    height: int = Field(default=0, ge=0, le=MAX_SIDE)
    guidance: float | None = Field(default=None, ge=0.0, le=30.0, description="Model family default if absent.")
    strength: float = Field(default=0.5, gt=0.0, le=1.0, description="Image-to-image only: how much to change.")
    image: WireBytes | None = Field(default=None, description="JPEG/PNG/WebP input for image-to-image.")
    similarity_filter: float | None = Field(
        default=None, ge=0.0, lt=1.0,
        description="Image-to-image only: skip generation when the input's cosine similarity to the session's "
                    "last accepted input is at least this (0.98 suits a camera); null: never skip.")
    format: ImageFormat = "jpeg"
    quality: int = Field(default=85, ge=1, le=100)


class Speak(Message):
    """Say `text`, or its next piece. A new id stops the session's current utterance (barge-in)."""

    type: Literal["speak"] = "speak"
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="Client-chosen utterance id.")
    text: str = Field(description="This piece of the text; the pieces of one id are joined in order.")
    final: bool = Field(default=True, description="False while more pieces of this utterance will follow.")
    voice: str | None = Field(default=None, description="A voice from hello.speech.voices; the default if absent.")
    speed: float = Field(default=1.0, ge=0.5, le=2.0)


class Cancel(Message):
    """Stop an utterance now; no audio of it follows the `cancelled` answer."""

    type: Literal["cancel"] = "cancel"
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)


class Export(Message):
    """Ask for frame `id`, one of the session's last few, as a file with signed Content Credentials."""

    type: Literal["export"] = "export"
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The id of the input whose frame to export.")


class Refresh(Message):
    """A new token for this session before its current one expires (docs/security.md)."""

    type: Literal["refresh"] = "refresh"
    token: str = Field(min_length=1, max_length=8192, description="A token from POST /v1/tokens.")


class Ping(Message):
    """Keeps a quiet session open past the server's idle timeout; answered `pong`."""

    type: Literal["ping"] = "ping"


ClientMessage = Annotated[Generate | Speak | Cancel | Export | Refresh | Ping, Field(discriminator="type")]

# ---------------------------------------------------------------- server -> client


class Hello(Message):
    """First message on every connection: what this server serves and its limits."""

    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    session: str
    ready: bool
    models: list[ModelInfo]
    speech: SpeechInfo | None = Field(default=None, description="The speech model, when one is served.")
    max_message_bytes: int
    max_prompt_chars: int
    expires_at: float | None = Field(default=None, description="When the session's token expires (Unix "
                                     "seconds) unless a `refresh` replaces it; null: never.")
    idle_seconds: float | None = Field(default=None, description="A session silent this long is closed; "
                                       "send `ping` to keep a quiet one open. Null: never.")


class ModelInfo(Message):
    name: str
    family: str
    device: str
    sizes: list[tuple[int, int]]
    default_guidance: float
    image_to_image: bool


class SpeechInfo(Message):
    name: str
    sample_rate: int
    voices: list[str]
    default_voice: str
    max_text_chars: int


class Frame(Message):
    """The outcome of a generate that ran: one encoded image and where its time went."""

    type: Literal["frame"] = "frame"
    id: str
    image: WireBytes
    format: ImageFormat
    width: int
    height: int
    model: str
    seed: int
    batch_size: int = Field(description="How many inputs shared this forward pass.")
    timings: dict[str, float] = Field(description="Milliseconds per stage, measured by the server.")
    drawn: str | None = Field(default=None, description="The text the model drew `prompt` as, where it draws a "
                              "prompt as another (livegen's own model: the nearest emoji's name); absent if as typed.")


class Superseded(Message):
    """A newer input from the same session replaced this one before it ran."""

    type: Literal["superseded"] = "superseded"
    id: str
    by: str


class Skipped(Message):
    """The input barely changed from input `frame`, the session's last accepted one; its frame stands."""

    type: Literal["skipped"] = "skipped"
    id: str
    frame: str = Field(description="Id of the input whose frame stays current.")
    similarity: float


class Blocked(Message):
    """Safety stopped this input: its prompt broke the moderation policy, or its frame failed the
    output check (no frame of it was sent); or a phrase of this utterance broke the speech policy
    (stage `speech`: nothing of that phrase or after it is spoken; the audio already sent stays)."""

    type: Literal["blocked"] = "blocked"
    id: str
    stage: Literal["prompt", "output", "speech"]
    category: str
    message: str


class Exported(Message):
    """Frame or utterance `id` as a file with a C2PA manifest embedded: created by livegen,
    trainedAlgorithmicMedia, and what made it (for a frame the model, steps, seed and a hash of the
    prompt; for speech the model and the audio's length), signed with the server's key."""

    type: Literal["exported"] = "exported"
    id: str
    image: WireBytes = Field(description="The file: an image, or for an utterance a WAV file.")
    format: ImageFormat | Literal["wav"]


class Audio(Message):
    """One chunk of an utterance's audio: 16-bit signed little-endian mono PCM, in `seq` order."""

    type: Literal["audio"] = "audio"
    id: str
    seq: int
    sample_rate: int
    pcm: WireBytes


def wav_file(pcm: bytes, sample_rate: int) -> bytes:
    """`audio` chunks' PCM, joined, as a 16-bit mono WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


class SpeechEnd(Message):
    """The utterance's last audio chunk has been sent."""

    type: Literal["speech_end"] = "speech_end"
    id: str
    chunks: int
    samples: int
    sample_rate: int
    timings: dict[str, float] = Field(description="ttfa_ms (first text to first chunk), synth_ms, total_ms.")


class Cancelled(Message):
    """The utterance stopped at the client's cancel or at a newer utterance; no more audio of it follows."""

    type: Literal["cancelled"] = "cancelled"
    id: str
    by: str | None = Field(default=None, description="The newer utterance that interrupted it, if any.")


class Error(Message):
    """The input (or message) could not be served. `id` is null when it could not be read."""

    type: Literal["error"] = "error"
    id: str | None = None
    code: str
    message: str
    retry_after_ms: int | None = Field(default=None, description="`rate_limited`: when the same would pass.")


class Refreshed(Message):
    """The session now runs on the token a `refresh` sent."""

    type: Literal["refreshed"] = "refreshed"
    expires_at: float


class Pong(Message):
    type: Literal["pong"] = "pong"


ServerMessage = Annotated[Hello | Frame | Superseded | Skipped | Blocked | Exported | Audio | SpeechEnd | Cancelled
                          | Error | Refreshed | Pong, Field(discriminator="type")]
Outcome = Frame | Superseded | Skipped | Blocked | Exported | Audio | SpeechEnd | Cancelled | Error
ClientRequest = Generate | Speak | Cancel | Export
Upkeep = Refresh | Ping  # messages about the session itself, answered by the server, never by the engine

Hello.model_rebuild()

# ---------------------------------------------------------------- errors and codecs


class ProtocolError(Exception):
    """A message that cannot be served; becomes an `error` message on the wire."""

    def __init__(self, code: str, message: str, id: str | None = None, retry_after_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id
        self.retry_after_ms = retry_after_ms

    def to_message(self) -> Error:
        return Error(id=self.id, code=self.code, message=self.message, retry_after_ms=self.retry_after_ms)


_client_adapter: TypeAdapter[ClientRequest | Upkeep] = TypeAdapter(ClientMessage)
_generate_adapter: TypeAdapter[Generate] = TypeAdapter(Generate)
_server_adapter: TypeAdapter[Hello | Outcome | Refreshed | Pong] = TypeAdapter(ServerMessage)
Codec = Literal["msgpack", "json"]


def _decode(data: bytes | str, codec: Codec) -> Any:
    name = "JSON" if codec == "json" else "msgpack"
    try:
        if codec == "json":
            return json.loads(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (RecursionError, StackError) as exc:  # deeper than the decoder's own stack
        raise _too_deep() from exc
    except Exception as exc:  # both decoders raise several unrelated types for bad input
        raise ProtocolError("malformed", f"not valid {name}: {exc}") from exc


def _too_deep(msg_id: str | None = None) -> ProtocolError:
    return ProtocolError("nesting_too_deep", f"maps and lists nest more than {MAX_NESTING} deep; "
                         "no field of a message takes one", msg_id)


def _check_nesting(message: dict[str, Any]) -> None:
    """Level by level, without recursion: a flat message (every valid one) costs one pass over its values."""
    level: list[Any] = [message]
    for _ in range(MAX_NESTING):
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return
    raise _too_deep(_message_id(message))


def _fits_utf8(value: Any) -> bool:
    """False only for a string UTF-8 cannot carry: one with a lone surrogate, which JSON can spell."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(message: dict[str, Any]) -> None:
    """A lone surrogate ("\\ud800" in JSON) would pass validation and then fail to encode on the way out.

    Only the top level's keys and strings can reach a validated message or an error message, so
    only they are checked; anything nested fails validation without being echoed.
    """
    bad = [key for key, value in message.items() if not _fits_utf8(key) or not _fits_utf8(value)]
    if bad:
        fields = ", ".join(str(key) if _fits_utf8(key) else ascii(key) for key in bad)
        raise ProtocolError("invalid", f"{fields}: strings must be Unicode text; a lone surrogate "
                            "(\\ud800-\\udfff) is not", _message_id(message))


def decode_map(data: bytes | str, codec: Codec) -> dict[str, Any]:
    """Decode one message into a map fit to validate: any bytes in, a map or a ProtocolError out."""
    raw = _decode(data, codec)
    if not isinstance(raw, dict):
        raise ProtocolError("malformed", "a message must be a map/object")
    _check_nesting(raw)
    _check_text(raw)
    return raw


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"] if p not in CLIENT_TYPES) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _message_id(raw: dict[str, Any]) -> str | None:
    """The id an error can name, when the message carries a usable one."""
    value = raw.get("id")
    return value if isinstance(value, str) and _fits_utf8(value) else None


CLIENT_TYPES = ("generate", "speak", "cancel", "export", "refresh", "ping")


def parse_client_message(data: bytes | str) -> ClientRequest | Upkeep:
    """Decode (JSON text or msgpack bytes) and validate one client message; raise ProtocolError."""
    raw = decode_map(data, "json" if isinstance(data, str) else "msgpack")
    msg_id = _message_id(raw)
    kind = raw.get("type")
    if kind is None:
        raise ProtocolError("invalid", "type: field required", msg_id)
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {reprlib.repr(kind)}; "
                            f"known: {', '.join(CLIENT_TYPES)}", msg_id)
    return _validate(_client_adapter, raw)


def parse_generate(raw: dict[str, Any]) -> Generate:
    return _validate(_generate_adapter, raw)


def _validate(adapter: TypeAdapter, raw: dict[str, Any]) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError("invalid", _validation_message(exc), _message_id(raw)) from exc


def encode(message: Message, codec: Codec = "msgpack") -> bytes | str:
    if codec == "json":
        return message.model_dump_json()
    return msgpack.packb(message.model_dump(mode="python"), use_bin_type=True)


def decode_server_message(data: bytes | str) -> Hello | Outcome | Refreshed | Pong:
    if isinstance(data, str):
        return _server_adapter.validate_json(data)
    return _server_adapter.validate_python(msgpack.unpackb(data, raw=False))


def json_schema() -> dict[str, Any]:
    """The protocol as JSON Schema: what clients send and what they receive."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "livegen WebSocket protocol",
        "version": PROTOCOL_VERSION,
        "client_to_server": _client_adapter.json_schema(),
        "server_to_client": _server_adapter.json_schema(),
    }
