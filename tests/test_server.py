"""End to end through a real uvicorn server on loopback, with the Python client."""

from __future__ import annotations

import asyncio
import json

import httpx
import msgpack
import pytest
import websockets

from livegen.client import AsyncClient, Client, GenerationError
from livegen.engine import image_runner
from livegen.protocol import decode_server_message, encode, Generate
from livegen.server.background import BackgroundServer, poll
from tests.conftest import png_bytes, server_settings

JSON = {"content-type": "application/json"}


async def test_text_to_image_frame_arrives(server):
    async with AsyncClient(server.ws_url) as client:
        assert client.hello.ready and client.hello.models[0].name == "tiny"
        frame = await client.generate("a red fox", width=128, height=128)
    assert (frame.width, frame.height, frame.format) == (128, 128, "jpeg")
    assert frame.image[:2] == b"\xff\xd8"
    assert frame.timings["total_ms"] > 0


async def test_image_to_image_frame_arrives(server):
    async with AsyncClient(server.ws_url) as client:
        frame = await client.generate("a red fox", image=png_bytes(), strength=0.7, format="png")
    assert frame.image[:4] == b"\x89PNG"
    assert "image_encode_ms" in frame.timings


async def test_json_text_messages_are_answered_in_json(server):
    async with websockets.connect(server.ws_url + "/v1/stream") as ws:
        await ws.recv()  # hello, msgpack
        await ws.send(json.dumps({"type": "generate", "id": "j1", "prompt": "a cat"}))
        reply = await ws.recv()
    assert isinstance(reply, str)
    frame = decode_server_message(reply)
    assert (frame.type, frame.id) == ("frame", "j1")


async def test_codec_json_in_the_url_makes_even_hello_json(server):
    async with websockets.connect(server.ws_url + "/v1/stream?codec=json") as ws:
        hello = decode_server_message(await ws.recv())
        assert hello.type == "hello" and hello.models[0].name == "tiny"
    async with websockets.connect(server.ws_url + "/v1/stream?codec=xml") as ws:
        error = decode_server_message(await ws.recv())
        assert (error.type, error.code) == ("error", "invalid")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1008


def test_root_serves_the_playground_and_its_assets(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '"/static/playground.js"' in page.text and '"/static/style.css"' in page.text
    script = httpx.get(server.url + "/static/playground.js")
    assert script.status_code == 200 and "from './livegen.js'" in script.text
    assert "export class LivegenClient" in httpx.get(server.url + "/static/livegen.js").text
    assert httpx.get(server.url + "/v1").json()["playground"] == "/"


async def test_two_sessions_share_one_forward_pass(tiny_sd, monkeypatch):
    """A long batching window (1 s; past what settings accept, so set without validation), and both
    sessions counted as active however long their priming took: the runner holds the first input
    until the other session's arrives, so how far apart the two land does not decide the batch."""
    monkeypatch.setattr(image_runner, "ACTIVE_WINDOW_S", 60.0)
    live = BackgroundServer(server_settings(tiny_sd).model_copy(update={"batch_wait_ms": 1000}))
    try:
        async with AsyncClient(live.ws_url) as a, AsyncClient(live.ws_url) as b:
            await asyncio.gather(a.generate("prime a"), b.generate("prime b"))
            ids = await asyncio.gather(a.send("fox"), b.send("owl"))
            frames = [await a.receive(), await b.receive()]
    finally:
        live.stop()
    assert [f.id for f in frames] == ids
    assert [f.batch_size for f in frames] == [2, 2]


def prompt_lookups(server) -> float:
    """Prompt-cache lookups so far: the runner makes one per input as it starts computing it."""
    lines = httpx.get(server.url + "/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("livegen_prompt_cache_total{"))


async def test_burst_gives_one_frame_for_the_last_input_and_superseded_for_the_rest(server):
    async with AsyncClient(server.ws_url) as client:
        # A slow input keeps the session busy while the burst arrives.
        lookups = prompt_lookups(server)
        busy = await client.send("busy", width=128, height=128, steps=8, guidance=3.0)
        for _ in range(1000):  # until the runner has taken it (then a newer input cannot supersede it)
            if prompt_lookups(server) > lookups:
                break
            await asyncio.sleep(0.005)
        assert prompt_lookups(server) > lookups, "the busy input never started"
        burst = [await client.send(f"burst {i}") for i in range(20)]
        outcomes = [await client.receive() for _ in range(21)]
    by_id = {}
    for outcome in outcomes:
        assert outcome.id not in by_id, "every input gets exactly one outcome"
        by_id[outcome.id] = outcome
    assert set(by_id) == {busy, *burst}
    assert by_id[busy].type == "frame"
    assert by_id[burst[-1]].type == "frame"
    assert all(by_id[i].type == "superseded" for i in burst[:-1])


def test_sync_client_generates(server):
    with Client(server.url) as client:
        frame = client.generate("a calm lake", seed=3)
    assert frame.seed == 3 and frame.batch_size == 1 and frame.drawn is None  # a model that draws prompts as typed


def test_http_generate_returns_the_image_with_timings(server):
    response = httpx.post(server.url + "/v1/generate", json={"prompt": "a cat", "format": "png", "seed": 5})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content[:4] == b"\x89PNG"
    assert json.loads(response.headers["x-livegen-timings"])["denoise_ms"] > 0
    assert response.headers["x-livegen-seed"] == "5"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": "x", "steps": 0}, 422, "invalid"),
        ({"prompt": "x", "model": "nope"}, 404, "unknown_model"),
        ({"prompt": "x", "width": 96, "height": 96}, 422, "size_not_served"),
        ({"prompt": "x", "image": "bm90IGFuIGltYWdl"}, 422, "bad_image"),
    ],
)
def test_http_generate_errors_are_typed(server, body, status, code):
    response = httpx.post(server.url + "/v1/generate", json=body)
    assert response.status_code == status
    assert response.json()["code"] == code


def test_http_generate_rejects_an_oversized_body(server):
    response = httpx.post(server.url + "/v1/generate", json={"prompt": "x" * (64 * 1024)})
    assert (response.status_code, response.json()["code"]) == (413, "message_too_large")


def test_http_generate_rejects_a_body_that_is_not_json(server):
    response = httpx.post(server.url + "/v1/generate", content=b"{nope", headers=JSON)
    assert (response.status_code, response.json()["code"]) == (400, "malformed")


def test_http_errors_are_counted_like_stream_errors(server):
    def malformed_count() -> float:
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            if line.startswith('livegen_errors_total{code="malformed"}'):
                return float(line.split()[-1])
        return 0.0

    before = malformed_count()
    httpx.post(server.url + "/v1/generate", content=b"[1, 2]", headers=JSON)
    assert malformed_count() == before + 1


def test_health_endpoints(server):
    live = httpx.get(server.url + "/livez").json()
    # The lag is clamped at 0, so only an upper bound tests it: an idle server's 50 ms heartbeat is
    # not a second late (a loop blocked by model compute would be).
    assert live["status"] == "ok" and isinstance(live["event_loop_lag_ms"], float)
    assert 0 <= live["event_loop_lag_ms"] < 1000
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"tiny": True} and ready.json()["reasons"] == {}


def test_metrics_expose_latency_histograms_and_counters(server):
    with Client(server.url) as client:
        client.generate("metrics")
    text = httpx.get(server.url + "/metrics").text
    for name in ("livegen_time_to_frame_seconds_bucket", 'livegen_stage_seconds_bucket{le="0.001",model="tiny",stage="denoise"}',
                 "livegen_queue_depth", "livegen_superseded_total", "livegen_errors_total", "livegen_batch_size_bucket",
                 "livegen_event_loop_lag_seconds_bucket", "livegen_runner_restarts_total"):
        assert name in text


def test_protocol_schema_and_openapi_are_published(server):
    schema = httpx.get(server.url + "/v1/protocol.schema.json").json()
    assert "generate" in json.dumps(schema["client_to_server"])
    assert {"frame", "superseded", "error", "hello"} <= set(json.dumps(schema["server_to_client"]).replace('"', " ").split())
    openapi = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/generate" in openapi["paths"]
    assert httpx.get(server.url + "/v1/models").json()[0]["sizes"] == [[64, 64], [128, 128]]


def test_a_missing_model_keeps_the_server_live_but_not_ready(tmp_path):
    missing = tmp_path / "absent"
    live = BackgroundServer(server_settings(missing), wait_ready=False)
    try:
        for _ in range(100):
            body = httpx.get(live.url + "/readyz").json()
            if body["error"]:
                break
        assert httpx.get(live.url + "/livez").status_code == 200
        ready = httpx.get(live.url + "/readyz")
        assert ready.status_code == 503
        assert str(missing) in ready.json()["error"]
    finally:
        live.stop()


def test_sessions_over_the_limit_are_refused_with_a_typed_error(tiny_sd):
    live = BackgroundServer(server_settings(tiny_sd, max_sessions=1))
    try:
        with Client(live.url) as first:
            with pytest.raises(GenerationError, match="too_many_sessions"):
                with Client(live.url):
                    pass
            assert first.generate("the first session is unaffected").type == "frame"
    finally:
        live.stop()


# ---------------------------------------------------------------- bad input, one test per kind

BIG = 64 * 1024 + 1


def _generate(**fields) -> dict:
    return {"type": "generate", "id": "bad", "prompt": "x", **fields}


BAD_INPUTS = {
    "malformed_msgpack": (b"\xc1\xc1", "malformed"),
    "malformed_json": ("{not json", "malformed"),
    "not_a_map": (msgpack.packb([1, 2]), "malformed"),
    "unknown_type": (msgpack.packb({"type": "dance", "id": "bad"}), "unknown_type"),
    "missing_type": (msgpack.packb({"id": "bad", "prompt": "x"}), "invalid"),
    "missing_prompt": (msgpack.packb({"type": "generate", "id": "bad"}), "invalid"),
    "missing_id": (msgpack.packb({"type": "generate", "prompt": "x"}), "invalid"),
    "wrong_type": (msgpack.packb(_generate(steps="four")), "invalid"),
    "unknown_field": (msgpack.packb(_generate(colour="red")), "invalid"),
    "nan_guidance": (msgpack.packb(_generate(guidance=float("nan"))), "invalid"),
    "nan_in_json": ('{"type": "generate", "id": "bad", "prompt": "x", "strength": NaN}', "invalid"),
    "steps_too_many": (msgpack.packb(_generate(steps=9)), "invalid"),
    "steps_zero": (msgpack.packb(_generate(steps=0)), "invalid"),
    "strength_out_of_range": (msgpack.packb(_generate(strength=1.5)), "invalid"),
    "negative_seed": (msgpack.packb(_generate(seed=-1)), "invalid"),
    "size_out_of_range": (msgpack.packb(_generate(width=4096, height=4096)), "invalid"),
    "size_not_served": (msgpack.packb(_generate(width=96, height=96)), "size_not_served"),
    "prompt_too_long": (msgpack.packb(_generate(prompt="x" * 501)), "prompt_too_long"),
    "blend_prompt_too_long": (msgpack.packb(_generate(blend_prompt="x" * 501, blend=0.5)), "prompt_too_long"),
    "blend_out_of_range": (msgpack.packb(_generate(blend_prompt="y", blend=1.5)), "invalid"),
    "similarity_filter_of_one": (msgpack.packb(_generate(similarity_filter=1.0)), "invalid"),
    "oversized_message": (msgpack.packb(_generate(prompt="x" * BIG)), "message_too_large"),
    "undecodable_image": (msgpack.packb(_generate(image=b"definitely not an image")), "bad_image"),
    "image_not_base64_in_json": ('{"type": "generate", "id": "bad", "prompt": "x", "image": "@@@"}', "invalid"),
    "unknown_model": (msgpack.packb(_generate(model="no-such-model")), "unknown_model"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
async def test_bad_input_gets_a_typed_error_and_the_session_stays_usable(server, kind):
    data, code = BAD_INPUTS[kind]
    async with AsyncClient(server.ws_url) as client:
        await client.send_raw(data)
        error = await client.receive()
        assert (error.type, error.code) == ("error", code), error
        assert error.message
        if isinstance(data, bytes) and code not in ("malformed", "message_too_large"):
            assert error.id == ("bad" if kind not in ("missing_id",) else None)
        frame = await client.generate("still here")
        assert frame.type == "frame"
    assert httpx.get(server.url + "/livez").status_code == 200


async def test_generation_error_raised_by_the_client_names_the_code(server):
    async with AsyncClient(server.ws_url) as client:
        with pytest.raises(GenerationError, match="unknown_model"):
            await client.generate("x", model="nope")


def test_encode_roundtrip_of_generate():
    request = Generate(id="r", prompt="p", image=b"\x00\x01")
    assert msgpack.unpackb(encode(request))["image"] == b"\x00\x01"
    assert json.loads(encode(request, "json"))["image"] == "AAE="
    assert json.loads(encode(Generate(id="r", prompt="p", image=b"\xfb\xff"), "json"))["image"] == "+/8="


def test_a_readiness_poll_reuses_one_client_and_stops_when_the_server_is_gone():
    """One client for every poll (a client a call kept most of a core busy beside the start it timed)."""
    clients: list[httpx.Client] = []
    assert poll(lambda client: clients.append(client) or len(clients) == 3, 10)
    assert len(clients) == 3 and len({id(client) for client in clients}) == 1
    assert not poll(lambda client: pytest.fail("polled a server already gone"), 10, gone=lambda: True)
    assert not poll(lambda client: client.get("http://127.0.0.1:1/readyz").status_code == 200, 0.1)
