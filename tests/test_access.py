"""Only the people you let in: keys, tokens, origins and per-client limits, through a real server.

Each refusal is checked for its status or close code, its typed error, and that nothing was
generated (the frame counter did not move).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from livegen.access.keys import KeyFile
from livegen.cli import app
from livegen.config import AccessConfig, LimitsConfig
from livegen.protocol import Error, Frame, decode_server_message, encode, Export, Generate, Ping, Refresh, Speak
from livegen.server.background import BackgroundServer
from tests.conftest import png_bytes, server_settings

JSON = {"content-type": "application/json"}
APP_ORIGIN = "https://app.example.com"
HEADER_TEXT = st.characters(min_codepoint=32, max_codepoint=126)  # what an HTTP header value may hold


class Keyed:
    """A server with API keys: `key` is active, `revocable` is for the revocation tests."""

    def __init__(self, live: BackgroundServer, keys: KeyFile, key: str):
        self.live, self.keys, self.key = live, keys, key
        self.url, self.ws_url = live.url, live.ws_url

    def auth(self, credential: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {credential or self.key}"}

    def token(self, **body) -> dict:
        response = httpx.post(self.url + "/v1/tokens", json=body, headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()

    def frames(self) -> float:
        return sum(sample.value for metric in self.live.engine.metrics.frames.collect() for sample in metric.samples
                   if sample.name == "livegen_frames_total")

    def open(self, credential: str | None = None, **headers: str) -> ClientConnection:
        socket = connect(self.ws_url + "/v1/stream", additional_headers={**self.auth(credential), **headers})
        assert decode_server_message(socket.recv(timeout=10)).type == "hello"
        return socket


def keyed_server(tmp_path: Path, tiny_sd: Path, **access) -> Keyed:
    keys = KeyFile(tmp_path / "api-keys.json")
    key, _ = keys.create("tests")
    live = BackgroundServer(server_settings(tiny_sd, access=AccessConfig(keys_file=keys.path, **access)))
    return Keyed(live, keys, key)


@pytest.fixture(scope="module")
def keyed(tiny_sd, tmp_path_factory):
    server = keyed_server(tmp_path_factory.mktemp("keyed"), tiny_sd, cors_origins=[APP_ORIGIN])
    yield server
    server.live.stop()


@pytest.fixture(scope="module")
def tight(tiny_sd, tmp_path_factory):
    """Small limits, each within reach of one test."""
    limits = LimitsConfig(sessions_per_key=2, inputs_per_session="6 per 20 seconds", pixels_per_key="8192 per minute",
                          speech_chars_per_key="20 per minute", exports_per_key="1/minute", idle_seconds=1.0)
    server = keyed_server(tmp_path_factory.mktemp("tight"), tiny_sd, limits=limits)
    yield server
    server.live.stop()


def refused_upgrade(url: str, **headers: str) -> tuple[int, Error]:
    with pytest.raises(InvalidStatus) as refused:
        connect(url + "/v1/stream", additional_headers=headers, open_timeout=10)
    response = refused.value.response
    return response.status_code, Error.model_validate_json(response.body)


def ask(socket: ClientConnection, message) -> object:
    socket.send(encode(message))
    return decode_server_message(socket.recv(timeout=30))


def closing(socket: ClientConnection, within: float) -> tuple[Error, int]:
    """The error a server-ended session's last message carries, and its close code."""
    last = None
    with pytest.raises(ConnectionClosed) as closed:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            last = decode_server_message(socket.recv(timeout=within))
    assert isinstance(last, Error), last
    return last, closed.value.rcvd.code


# ---------------------------------------------------------------- credentials


def test_no_key_is_refused_everywhere_and_nothing_runs(keyed):
    before = keyed.frames()
    status, error = refused_upgrade(keyed.ws_url)
    assert (status, error.code) == (401, "unauthorized")
    response = httpx.post(keyed.url + "/v1/generate", json={"prompt": "a cat"})
    assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
    assert httpx.get(keyed.url + "/v1/models").status_code == 401
    assert keyed.frames() == before


def test_a_wrong_key_is_refused(keyed):
    wrong = keyed.key[:-4] + "AAAA"
    assert refused_upgrade(keyed.ws_url, Authorization=f"Bearer {wrong}")[1].code == "unauthorized"
    assert httpx.post(keyed.url + "/v1/generate", json={"prompt": "x"}, headers=keyed.auth(wrong)).status_code == 401


def test_the_key_works_on_both_paths(keyed):
    socket = keyed.open()
    assert isinstance(ask(socket, Generate(id="k1", prompt="a red fox")), Frame)
    socket.close()
    response = httpx.post(keyed.url + "/v1/generate", json={"prompt": "a fox"}, headers=keyed.auth())
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"


def test_a_revoked_key_is_refused_at_once_and_its_open_sessions_close(keyed):
    key, record = keyed.keys.create("to revoke")
    socket = keyed.open(key)
    token = httpx.post(keyed.url + "/v1/tokens", json={}, headers=keyed.auth(key)).json()["token"]
    keyed.keys.revoke(record.id)
    status, error = refused_upgrade(keyed.ws_url, Authorization=f"Bearer {key}")
    assert (status, error.code) == (401, "unauthorized") and "revoked" in error.message
    assert refused_upgrade(keyed.ws_url, Authorization=f"Bearer {token}")[1].code == "unauthorized"
    error, code = closing(socket, within=5)
    assert (error.code, code) == ("unauthorized", 1008)


def test_an_expired_token_is_refused(keyed):
    token = keyed.token(seconds=1)["token"]
    time.sleep(1.2)
    status, error = refused_upgrade(keyed.ws_url, Authorization=f"Bearer {token}")
    assert (status, error.code) == (401, "token_expired")


def test_a_session_outlives_its_token_only_when_refreshed(keyed):
    refreshed = keyed.open(keyed.token(seconds=2)["token"])
    lapsed = keyed.open(keyed.token(seconds=2)["token"])
    answer = ask(refreshed, Refresh(token=keyed.token(seconds=30)["token"]))
    assert answer.type == "refreshed" and answer.expires_at > time.time() + 20
    error, code = closing(lapsed, within=6)
    assert (error.code, code) == ("token_expired", 1008)
    assert isinstance(ask(refreshed, Generate(id="after", prompt="still mine")), Frame)
    refreshed.close()


def test_a_refresh_from_another_key_is_refused_and_the_session_goes_on(keyed):
    other, _ = keyed.keys.create("other")
    socket = keyed.open(keyed.token()["token"])
    foreign = httpx.post(keyed.url + "/v1/tokens", json={}, headers=keyed.auth(other)).json()["token"]
    assert ask(socket, Refresh(token=foreign)).code == "forbidden"
    assert ask(socket, Refresh(token="not a token")).code == "unauthorized"
    assert isinstance(ask(socket, Generate(id="on", prompt="a fox")), Frame)
    socket.close()


def test_a_token_for_another_model_cannot_use_this_one(keyed):
    before = keyed.frames()
    minted = keyed.token(models=["someone-elses"])
    socket = connect(keyed.ws_url + "/v1/stream", additional_headers=keyed.auth(minted["token"]))
    assert decode_server_message(socket.recv(timeout=10)).models == []  # hello shows only what it may use
    error = ask(socket, Generate(id="m1", prompt="a fox", model="tiny"))
    assert (error.code, error.id) == ("forbidden", "m1")
    socket.close()
    response = httpx.post(keyed.url + "/v1/generate", json={"prompt": "a fox"}, headers=keyed.auth(minted["token"]))
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    assert keyed.frames() == before


def test_a_token_cannot_mint_tokens_or_read_metrics(keyed):
    token = keyed.token()["token"]
    assert httpx.post(keyed.url + "/v1/tokens", json={}, headers=keyed.auth(token)).status_code == 403
    assert httpx.get(keyed.url + "/metrics", headers=keyed.auth(token)).status_code == 401
    assert httpx.post(keyed.url + "/v1/tokens", json={"seconds": -1}, headers=keyed.auth()).status_code == 422
    assert httpx.post(keyed.url + "/v1/tokens", json={"limits": {"pixels": "lots"}},
                      headers=keyed.auth()).status_code == 422


def test_operational_endpoints_keep_details_for_key_holders(keyed):
    bare = httpx.get(keyed.url + "/readyz")
    assert bare.status_code == 200 and bare.json() == {"ready": True}
    detailed = httpx.get(keyed.url + "/readyz", headers=keyed.auth()).json()
    assert detailed["models"] == {"tiny": True} and "safety" in detailed
    assert httpx.get(keyed.url + "/livez").status_code == 200
    assert httpx.get(keyed.url + "/metrics").status_code == 401
    metrics = httpx.get(keyed.url + "/metrics", headers=keyed.auth()).text
    assert 'livegen_access_refusals_total{code="unauthorized"}' in metrics


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(credential=st.one_of(st.text(HEADER_TEXT, max_size=300), st.from_regex(r"lg_[0-9a-f]{8}_[A-Za-z0-9_-]{0,50}", fullmatch=True),
                            st.from_regex(r"ey[A-Za-z0-9_-]{5,40}\.[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,40}", fullmatch=True)))
def test_any_credential_text_is_a_typed_401_never_a_failure(keyed, credential):
    response = httpx.get(keyed.url + "/v1/models", headers={"Authorization": ("Bearer " + credential).strip()})
    assert response.status_code == 401, response.text
    assert response.json()["code"] in {"unauthorized", "token_expired"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["header", "subprotocol", "query"]),
       credential=st.one_of(st.from_regex(r"[A-Za-z0-9._~-]{1,300}", fullmatch=True),
                            st.from_regex(r"lg_[0-9a-f]{8}_[A-Za-z0-9_-]{1,50}", fullmatch=True),
                            st.text(HEADER_TEXT, min_size=1, max_size=300)))
def test_any_credential_on_the_upgrade_is_a_typed_refusal(keyed, where, credential):
    url, headers, subprotocols = keyed.ws_url + "/v1/stream", {}, None
    if where == "header":
        headers = {"Authorization": ("Bearer " + credential).strip()}
    elif where == "subprotocol":
        if not all(c.isalnum() or c in "._~-" for c in credential):
            return  # not a subprotocol token: no browser would send it
        subprotocols = ["livegen", "bearer." + credential]
    else:
        url += "?" + urlencode({"token": credential})
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=headers, subprotocols=subprotocols, open_timeout=10)
    assert refused.value.response.status_code == 401
    assert Error.model_validate_json(refused.value.response.body).code in {"unauthorized", "token_expired"}


# ---------------------------------------------------------------- browsers


def test_a_foreign_origin_cannot_open_a_session_even_without_keys(server, keyed):
    for live, headers in ((server, {}), (keyed, keyed.auth())):
        status, error = refused_upgrade(live.ws_url, Origin="http://evil.example", **headers)
        assert (status, error.code) == (403, "forbidden")
    for origin in (server.url, "http://localhost:5173"):  # its own page, and a page on loopback
        socket = connect(server.ws_url + "/v1/stream", additional_headers={"Origin": origin})
        assert decode_server_message(socket.recv(timeout=10)).type == "hello"
        socket.close()


def test_a_cross_site_simple_post_generates_nothing(server):
    before = server.engine.metrics.frames.labels("tiny")._value.get()
    for media_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = httpx.post(server.url + "/v1/generate", content=json.dumps({"prompt": "a cat"}),
                              headers={"content-type": media_type, "origin": "http://evil.example"})
        assert (response.status_code, response.json()["code"]) == (415, "unsupported_media_type")
    assert server.engine.metrics.frames.labels("tiny")._value.get() == before


def test_cors_is_off_unless_configured_and_then_only_for_its_origins(server, keyed):
    def preflight(live, origin: str) -> httpx.Response:
        return httpx.options(live.url + "/v1/generate", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})

    assert "access-control-allow-origin" not in preflight(server, APP_ORIGIN).headers
    assert preflight(keyed, APP_ORIGIN).headers["access-control-allow-origin"] == APP_ORIGIN
    assert "access-control-allow-origin" not in preflight(keyed, "http://evil.example").headers


def test_a_dns_rebinding_host_is_refused(server):
    assert httpx.get(server.url + "/v1/models", headers={"Host": "evil.example:80"}).status_code == 400


def test_the_playground_is_served_with_a_content_security_policy(server):
    headers = httpx.get(server.url + "/").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "default-src 'self'" in headers["content-security-policy"]


def test_playground_tokens_go_only_to_a_page_on_this_machine(keyed, server):
    assert httpx.post(server.url + "/v1/playground/token").json()["token"] is None  # no keys: none needed
    minted = httpx.post(keyed.url + "/v1/playground/token", headers={"Origin": keyed.url}).json()
    socket = keyed.open(minted["token"])
    assert isinstance(ask(socket, Generate(id="p", prompt="a fox")), Frame)
    socket.close()
    for headers in ({"Origin": "http://evil.example"}, {"X-Forwarded-For": "203.0.113.9"}):
        response = httpx.post(keyed.url + "/v1/playground/token", headers=headers)
        assert (response.status_code, response.json()["code"]) == (403, "forbidden")


# ---------------------------------------------------------------- limits


def test_sessions_per_key(tight):
    first, second = tight.open(), tight.open()
    status, error = refused_upgrade(tight.ws_url, **tight.auth())
    assert (status, error.code) == (429, "too_many_sessions")
    first.close()
    time.sleep(0.3)
    tight.open().close()
    second.close()


def test_inputs_per_session_and_pixels_per_key(tight):
    socket = tight.open()
    before = tight.frames()
    answers = [ask(socket, Generate(id=f"i{n}", prompt="a fox", width=64, height=64)) for n in range(3)]
    assert [a.type for a in answers[:2]] == ["frame", "frame"]  # 8192 pixels a minute: two 64x64 frames
    assert (answers[2].code, answers[2].id) == ("rate_limited", "i2") and answers[2].retry_after_ms > 0
    assert tight.frames() == before + 2
    messages = [ask(socket, Ping()) for _ in range(3)]  # every message counts: 6 in 20 s
    assert [m.type for m in messages] == ["pong"] * 3
    limited = ask(socket, Ping())
    assert (limited.code, limited.retry_after_ms > 0) == ("rate_limited", True)
    socket.close()
    response = httpx.post(tight.url + "/v1/generate", json={"prompt": "a fox"}, headers=tight.auth())
    assert (response.status_code, response.json()["code"]) == (429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1


def test_speech_characters_and_exports_per_key(tight):
    socket = tight.open()
    assert ask(socket, Speak(id="s1", text="x" * 15)).code == "no_speech_model"  # counted, then answered
    assert ask(socket, Speak(id="s2", text="y" * 10)).code == "rate_limited"
    assert ask(socket, Export(id="nothing")).code == "unknown_frame"
    assert ask(socket, Export(id="nothing")).code == "rate_limited"
    socket.close()
    metrics = httpx.get(tight.url + "/metrics", headers=tight.auth()).text
    for limit in ("speech_chars_per_key", "exports_per_key", "inputs_per_session", "pixels_per_key",
                  "sessions_per_key"):
        assert f'livegen_limit_refusals_total{{limit="{limit}"}}' in metrics


def test_a_silent_session_is_closed_and_a_pinging_one_is_not(tight):
    silent, pinging = tight.open(), tight.open()
    for _ in range(3):
        time.sleep(0.5)
        pinging.send(encode(Ping()))
        assert decode_server_message(pinging.recv(timeout=5)).type == "pong"
    error, code = closing(silent, within=3)
    assert (error.code, code) == ("idle_timeout", 1000)
    pinging.close()


def test_an_oversized_token_request_is_refused_before_it_is_read(keyed):
    response = httpx.post(keyed.url + "/v1/tokens", content=b"{" + b" " * 20000 + b"}",
                          headers={**keyed.auth(), **JSON})
    assert (response.status_code, response.json()["code"]) == (413, "message_too_large")


def test_an_image_that_is_not_jpeg_png_or_webp_is_bad_image(server):
    import io

    from PIL import Image

    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, "GIF")
    socket = connect(server.ws_url + "/v1/stream")
    socket.recv(timeout=10)
    error = ask(socket, Generate(id="g", prompt="a fox", image=gif.getvalue()))
    assert error.code == "bad_image" and "JPEG, PNG or WebP" in error.message
    assert isinstance(ask(socket, Generate(id="p", prompt="a fox", image=png_bytes())), Frame)
    socket.close()


# ---------------------------------------------------------------- secure by default


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--api-keys", str(tmp_path / "none.json")])
    assert result.exit_code == 2
    assert "livegen api-keys create" in result.output and "--insecure" in result.output


def test_api_keys_cli_creates_lists_and_revokes(tmp_path):
    path = tmp_path / "keys.json"
    made = CliRunner().invoke(app, ["api-keys", "create", "--name", "ci", "--file", str(path)])
    secret = made.output.split()[0]
    assert made.exit_code == 0 and secret.startswith("lg_") and secret not in path.read_text()
    key_id = secret.split("_")[1]
    assert "active" in CliRunner().invoke(app, ["api-keys", "list", "--file", str(path)]).output
    assert CliRunner().invoke(app, ["api-keys", "revoke", key_id, "--file", str(path)]).exit_code == 0
    assert "revoked" in CliRunner().invoke(app, ["api-keys", "list", "--file", str(path)]).output
    assert path.stat().st_mode & 0o077 == 0  # the owner's alone


def test_a_broken_or_deleted_key_file_never_opens_the_server(tmp_path, tiny_sd):
    server = keyed_server(tmp_path, tiny_sd)
    try:
        server.keys.path.write_text("{ half-written")
        assert refused_upgrade(server.ws_url)[1].code == "unauthorized"
        server.open().close()  # the keys read before stay in force
        server.keys.path.unlink()
        assert refused_upgrade(server.ws_url)[0] == 401
    finally:
        server.live.stop()
