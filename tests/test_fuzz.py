"""Hostile input over a real socket: Hypothesis sends any shape, on both codecs, and every message is answered.

Each test holds one session for all its examples. The properties: every message gets exactly one
final outcome naming its id (or null when the id could not be read), an `error` always has a
documented code, nothing is lost or dropped, and afterwards the same socket still makes a frame.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from livegen.bench.fuzz import Session as FuzzSession
from livegen.cli import app
from livegen.protocol import MAX_NESTING, Cancelled, Error, Outcome, Superseded, decode_server_message, encode

FINAL = {"frame", "superseded", "skipped", "blocked", "exported", "error", "speech_end", "cancelled"}
# Codes a hostile message may get from the test server (no speech model); `internal` would be a bug.
TYPED_CODES = {"malformed", "invalid", "unknown_type", "nesting_too_deep", "message_too_large", "unknown_model",
               "prompt_too_long", "size_not_served", "bad_image", "unknown_frame", "no_speech_model"}
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CODECS = ("json", "msgpack")
FRESH = "<fresh id>"  # stands for a new id of the session's, so that no two examples share one


class Session:
    """One WebSocket session; `ask` sends one message and returns the final outcome that answers it."""

    def __init__(self, ws_url: str):
        self.socket: ClientConnection = connect(ws_url + "/v1/stream", max_size=None)
        assert decode_server_message(self.socket.recv(timeout=10)).type == "hello"
        self.ids = (f"fuzz-{n}" for n in itertools.count())

    def fresh(self, message: dict) -> dict:
        return {**message, "id": next(self.ids)} if message.get("id") == FRESH else message

    def ask(self, data: bytes | str) -> Outcome:
        self.socket.send(data)
        while (outcome := decode_server_message(self.socket.recv(timeout=30))).type not in FINAL:
            pass
        return outcome

    def still_generates(self) -> None:
        """A valid input now gets its frame next: no connection dropped, no stray outcome still queued."""
        frame_id = next(self.ids)
        outcome = self.ask(msgpack.packb({"type": "generate", "id": frame_id, "prompt": "still here"}))
        assert (outcome.type, outcome.id) == ("frame", frame_id), outcome

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def session(server):
    live = Session(server.ws_url)
    yield live
    live.close()


def answered(outcome: Outcome, sent_id: Any) -> None:
    """The property every message meets: a final outcome for its own id (null if unreadable), or a typed error."""
    names = {None}
    if isinstance(sent_id, str):
        names.add(sent_id)
    elif isinstance(sent_id, bytes):  # a msgpack bin where a string belongs is read as UTF-8
        names.add(sent_id.decode(errors="replace"))
    assert outcome.id in names, (outcome, sent_id)
    if isinstance(outcome, Error):
        assert outcome.code in TYPED_CODES and outcome.message, outcome


def encode_any(value: Any, codec: str) -> bytes | str:
    return json.dumps(value) if codec == "json" else msgpack.packb(value, use_bin_type=True)


def fits_utf8(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def sent_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


# ---------------------------------------------------------------- strategies

# Any text, lone surrogates included (JSON spells them "\ud800"); st.text() alone leaves them out.
ANY_TEXT = st.text(max_size=40) | st.lists(st.characters(categories=["Cs"]) | st.characters(), max_size=40).map("".join)
NASTY_TEXT = st.sampled_from(["", "\x00", "\u202eevil", "👩‍👩‍👧‍👦", "e\u0301" * 30, "\ufeff", "\uffff", "Ω" * 65,
                              "))))))))))", "1234567890" * 10, "\ud800", "a\udfffb", "\n\t\r"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT | NASTY_TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=12)
# msgpack has more: bin, ext types (timestamps among them), non-string keys, 64-bit integers.
# Its strings are always UTF-8.
MSGPACK_INTEGERS = st.integers(-2**63, 2**64 - 1)
MSGPACK_SCALARS = (st.none() | st.booleans() | MSGPACK_INTEGERS | st.floats() | st.text(max_size=40)
                   | st.binary(max_size=40) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
                   | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999)))
MSGPACK_VALUES = st.recursive(MSGPACK_SCALARS, lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.text(max_size=10) | st.binary(max_size=4) | MSGPACK_INTEGERS, inner,
                                                max_size=4), max_leaves=12)

VALID = {
    "generate": {"type": "generate", "prompt": "a red fox", "steps": 1, "seed": 3, "format": "png"},
    "speak": {"type": "speak", "text": "Hello there.", "final": True},
    "cancel": {"type": "cancel"},
    "export": {"type": "export"},
}
FIELDS = ["type", "id", "prompt", "blend_prompt", "blend", "model", "seed", "steps", "width", "height", "guidance",
          "strength", "image", "similarity_filter", "format", "quality", "text", "final", "voice", "speed", "colour"]


@st.composite
def mutated(draw: st.DrawFn, values: st.SearchStrategy) -> dict:
    """A valid message with a fresh id, then one to three fields removed, retyped or added."""
    message = {**draw(st.sampled_from(list(VALID.values()))), "id": FRESH}
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()) and field in message:
            del message[field]
        else:
            message[field] = draw(values | st.sampled_from([0, -1, 2**32, 1e308, float("nan"), "", "generate"]))
    return message


def nested(depth: int, kind: str, codec: str) -> bytes | str:
    """`depth` lists or maps inside one another, built flat: the encoders themselves recurse."""
    if codec == "json":
        return ("[" * depth + "1" + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)
    return (b"\x91" * depth if kind == "list" else b"\x81\xa1a" * depth) + b"\x01"


def deep_message(field: str, inner: bytes | str, codec: str) -> bytes | str:
    if codec == "json":
        return '{"type":"generate","id":"deep",' + json.dumps(field) + ":" + inner + "}"
    head = msgpack.packb({"type": "generate", "id": "deep"})
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb(field) + inner  # one more map entry


def run(session: Session, strategy: st.SearchStrategy, check: Callable[[Any], None], max_examples: int,
        examples: tuple = ()) -> None:
    """Hypothesis drives `check` over `strategy` on this one session, then the session must still work."""

    @settings(FUZZ, max_examples=max_examples)
    @given(strategy)
    def each(value: Any) -> None:
        check(value)

    for value in examples:
        each = example(value)(each)
    each()
    session.still_generates()


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("codec", CODECS)
def test_any_structure_gets_an_answer(session, codec):
    values = JSON_VALUES if codec == "json" else MSGPACK_VALUES
    run(session, values, lambda v: answered(session.ask(encode_any(v, codec)), sent_id(v)), 40)


@pytest.mark.parametrize("codec", CODECS)
def test_mutated_valid_messages_get_an_answer(session, codec):
    values = JSON_VALUES if codec == "json" else MSGPACK_VALUES

    def check(message: dict) -> None:
        message = session.fresh(message)
        answered(session.ask(encode_any(message, codec)), message.get("id"))

    run(session, mutated(values), check, 50)


@pytest.mark.parametrize("codec", CODECS)
def test_any_text_in_any_string_field_gets_an_answer(session, codec):
    # msgpack cannot carry a lone surrogate in a string; bin holding one is in the byte tests.
    text = ANY_TEXT | NASTY_TEXT if codec == "json" else st.text(max_size=40) | NASTY_TEXT.filter(fits_utf8)
    fields = st.sampled_from(["id", "prompt", "blend_prompt", "model", "type", "format", "text", "voice"])
    messages = st.tuples(st.sampled_from(list(VALID.values())), fields, text).map(
        lambda t: {**t[0], "id": FRESH, t[1]: t[2]})

    def check(message: dict) -> None:
        message = session.fresh(message)
        outcome = session.ask(encode_any(message, codec))
        answered(outcome, message["id"])
        if outcome.type == "frame":
            assert outcome.id == message["id"]

    run(session, messages, check, 40)


@pytest.mark.parametrize("codec", CODECS)
def test_deep_nesting_gets_nesting_too_deep_and_shallow_nesting_invalid(session, codec):
    cases = st.tuples(st.integers(1, 5000) | st.sampled_from([MAX_NESTING - 1, MAX_NESTING, 1500]),
                      st.sampled_from(["list", "map"]), st.sampled_from(["prompt", "type", "colour"]))

    def check(case: tuple[int, str, str]) -> None:
        depth, kind, field = case
        outcome = session.ask(deep_message(field, nested(depth, kind, codec), codec))
        assert outcome.type == "error"
        if depth + 1 > MAX_NESTING:  # the message's own map is the first level
            assert outcome.code == "nesting_too_deep" and outcome.id in ("deep", None), outcome
        else:
            assert outcome.code in ("invalid", "unknown_type") and outcome.id == "deep", outcome

    # The message: 1,500 levels raised RecursionError and killed the session.
    run(session, cases, check, 30, examples=((1500, "list", "prompt"),))


def test_random_bytes_and_random_text_get_an_answer(session):
    frames = st.binary(max_size=300) | st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
    run(session, frames, lambda data: answered(session.ask(data), None), 60)


@pytest.mark.parametrize("codec", CODECS)
def test_a_whole_message_nested_too_deep_gets_a_typed_error(session, codec):
    outcome = session.ask(nested(3000, "map", codec))
    assert (outcome.type, outcome.code, outcome.id) == ("error", "nesting_too_deep", None)
    session.still_generates()


def test_a_lone_surrogate_in_an_id_is_refused_before_it_could_break_the_reply(session):
    outcome = session.ask('{"type": "generate", "id": "\\ud800", "prompt": "x"}')
    assert (outcome.type, outcome.code, outcome.id) == ("error", "invalid", None)
    assert "surrogate" in outcome.message
    outcome = session.ask('{"type": "generate", "id": "named", "prompt": "\\udfff"}')
    assert (outcome.code, outcome.id) == ("invalid", "named")
    session.still_generates()


# ---------------------------------------------------------------- what does close a session: the transport


def test_a_message_over_the_transport_cap_closes_the_session_with_1009(session):
    session.socket.send(b"x" * (4 * 64 * 1024 + 1))  # 4 x max_message_bytes, as `livegen serve` sets it
    with pytest.raises(ConnectionClosed) as closed:
        session.socket.recv(timeout=10)
    assert closed.value.rcvd.code == 1009


def test_a_text_frame_that_is_not_utf8_closes_the_session_with_1007(session):
    with session.socket.send_context():  # the client library would refuse to send it
        session.socket.protocol.send_text(b'{"type": "generate", "id": "\xff"}')
    with pytest.raises(ConnectionClosed) as closed:
        session.socket.recv(timeout=10)
    assert closed.value.rcvd.code == 1007


# ---------------------------------------------------------------- `livegen bench fuzz`


def test_bench_fuzz_quick_finds_nothing_lost_duplicated_or_crashed(server, tmp_path):
    result = CliRunner().invoke(app, ["bench", "fuzz", "--quick", "--url", server.url, "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "fuzz.json").read_text())
    assert (results["messages"], results["sessions"]) == (400, 4) and results["http_requests"] > 0
    assert results["counts"] == dict.fromkeys(results["counts"], 0) and results["passed"]
    assert {"malformed", "invalid", "nesting_too_deep", "no_speech_model"} <= set(results["error_codes"])
    assert results["outcomes"]["frame"] > 0
    assert "lost outcomes | 0" in (tmp_path / "fuzz.md").read_text()


def test_the_bench_ledger_counts_lost_and_duplicated_answers():
    ledger = FuzzSession(0, "ws://unused", 0, seed=0)
    ledger.speech, ledger.max_bytes = True, 1024
    ledger.account(msgpack.packb({"type": "generate", "id": "a", "prompt": "x"}), "msgpack", False)
    ledger.account(b"\xc1", "msgpack", False)  # unreadable: owed an error with a null id
    ledger.account(msgpack.packb({"type": "speak", "id": "u", "text": "Hel", "final": False}), "msgpack", True)
    ledger.account(msgpack.packb({"type": "speak", "id": "u", "text": "lo.", "final": True}), "msgpack", True)
    ledger.account(msgpack.packb({"type": "cancel", "id": "u"}), "msgpack", True)
    assert (ledger.lost(), ledger.duplicated()) == (4, 0)  # a, null, the utterance u, the cancel of u
    ledger.take(encode(Superseded(id="a", by="b")))
    ledger.take(encode(Error(code="malformed", message="not msgpack")))
    ledger.take(encode(Cancelled(id="u")))  # answers the cancel and the utterance
    assert ledger.settled() and (ledger.lost(), ledger.duplicated()) == (0, 0)
    ledger.take(encode(Error(id="a", code="internal", message="a second answer")))
    assert ledger.duplicated() == 1
