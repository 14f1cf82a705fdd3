"""The Python clients on a server with API keys: a key or a token provider on every connection, a
token refreshed before it expires, pings through a quiet spell, and a refusal raised at once.

One server for the module (each start costs seconds), with 3-second tokens and a 1.5-second
idle timeout so that refreshes and pings are needed within a few seconds of a test.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from livegen.access.keys import KeyFile
from livegen.cli import app
from livegen.client import AsyncClient, Client, GenerationError, Reconnect, Refused
from livegen.config import AccessConfig, LimitsConfig
from livegen.protocol import Frame
from livegen.server.background import BackgroundServer
from tests.conftest import server_settings

TOKEN_SECONDS = 3.0
IDLE_SECONDS = 1.5
QUICK = Reconnect(first_delay=0.05, min_delay=0.05, max_delay=0.5, give_up_after=20)


@dataclass
class Keyed:
    live: BackgroundServer
    keys: KeyFile
    key: str

    @property
    def url(self) -> str:
        return self.live.url

    def token(self, seconds: float = TOKEN_SECONDS) -> str:
        response = httpx.post(self.url + "/v1/tokens", json={"seconds": seconds},
                              headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 200, response.text
        return response.json()["token"]

    async def token_async(self, seconds: float = TOKEN_SECONDS) -> str:
        async with httpx.AsyncClient() as http:
            response = await http.post(self.url + "/v1/tokens", json={"seconds": seconds},
                                       headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 200, response.text
        return response.json()["token"]

    def count(self, metric: str, **labels: str) -> float:
        return self.live.engine.metrics.registry.get_sample_value(metric, labels) or 0.0


@pytest.fixture(scope="module")
def keyed(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory):
    keys = KeyFile(tmp_path_factory.mktemp("client-auth") / "api-keys.json")
    key, _ = keys.create("client tests")
    limits = LimitsConfig(idle_seconds=IDLE_SECONDS, inputs_per_session="1000000/second")
    live = BackgroundServer(server_settings(tiny_sd, access=AccessConfig(keys_file=keys.path, token_seconds=TOKEN_SECONDS,
                                                                         limits=limits)))
    yield Keyed(live, keys, key)
    live.stop()


@pytest.mark.timeout(60, func_only=True)
async def test_an_api_key_opens_sessions_for_both_clients(keyed):
    with Client(keyed.url, api_key=keyed.key) as sync_client:
        assert sync_client.hello.expires_at is None and sync_client.hello.idle_seconds == IDLE_SECONDS
        assert isinstance(sync_client.generate("a red fox", seed=1), Frame)
    async with AsyncClient(keyed.url, api_key=keyed.key, codec="json") as client:
        assert (await client.generate("a red fox", seed=2)).seed == 2


@pytest.mark.timeout(60, func_only=True)
async def test_a_wrong_or_missing_key_is_refused_at_once_and_never_retried(keyed):
    wrong = keyed.key[:-4] + "AAAA"
    before = keyed.count("livegen_access_refusals_total", code="unauthorized")
    started = time.monotonic()
    for credentials in ({"api_key": wrong}, {}):
        with pytest.raises(Refused) as sync_refusal:
            with Client(keyed.url, reconnect=QUICK, **credentials):
                pass
        with pytest.raises(Refused) as async_refusal:
            async with AsyncClient(keyed.url, reconnect=QUICK, **credentials):
                pass
        for refusal in (sync_refusal.value, async_refusal.value):
            assert (refusal.status, refusal.error.code) == (401, "unauthorized")
            assert str(refusal).startswith("unauthorized: ")
    assert time.monotonic() - started < 5
    assert keyed.count("livegen_access_refusals_total", code="unauthorized") == before + 4  # one try each


@pytest.mark.timeout(60, func_only=True)
async def test_a_token_provider_keeps_a_session_open_past_its_first_token(keyed):
    expired = keyed.count("livegen_access_refusals_total", code="token_expired")
    sync_calls: list[float] = []
    async_calls: list[float] = []

    def provide() -> str:
        sync_calls.append(time.monotonic())
        return keyed.token()

    async def provide_async() -> str:
        async_calls.append(time.monotonic())
        return await keyed.token_async()

    def quiet_script() -> tuple[str, str, Frame]:
        """Neither sends nor reads for 5.5 s: its upkeep thread refreshes (and pings) alone."""
        with Client(keyed.url, token=provide) as client:
            session = client.hello.session
            time.sleep(TOKEN_SECONDS + 2.5)
            return session, client.hello.session, client.generate("a red fox", seed=3)

    async with AsyncClient(keyed.url, token=provide_async) as client:
        session, expires_at = client.hello.session, client.hello.expires_at
        assert expires_at is not None and expires_at - time.time() <= TOKEN_SECONDS
        script = asyncio.create_task(asyncio.to_thread(quiet_script))
        outcomes = []
        ends = time.monotonic() + TOKEN_SECONDS + 2.5
        while time.monotonic() < ends:  # a steady stream: every answer it reads must be a frame
            await client.send("a red fox", seed=len(outcomes))
            outcomes.append(await client.receive())
            await asyncio.sleep(0.25)
        assert client.hello.session == session  # the first token's expiry did not end it
        script_session, script_session_after, frame = await script
    assert all(isinstance(outcome, Frame) for outcome in outcomes), outcomes  # no refreshed, no pong
    assert len(async_calls) >= 2  # the connection's token, then at least one refresh
    assert script_session_after == script_session and frame.seed == 3
    assert len(sync_calls) >= 2
    assert keyed.count("livegen_access_refusals_total", code="token_expired") == expired  # no session ran out


@pytest.mark.timeout(60, func_only=True)
async def test_pings_keep_a_quiet_session_open_past_the_idle_timeout(keyed):
    idle_closes = keyed.count("livegen_limit_refusals_total", limit="idle")

    def quiet_script() -> tuple[str, str]:
        with Client(keyed.url, api_key=keyed.key) as client:
            session = client.hello.session
            time.sleep(4)
            client.generate("a red fox")
            return session, client.hello.session

    async with AsyncClient(keyed.url, api_key=keyed.key) as client:
        session = client.hello.session
        script = asyncio.create_task(asyncio.to_thread(quiet_script))
        await asyncio.sleep(4)
        await client.generate("a red fox")
        assert client.hello.session == session
        before, after = await script
    assert before == after
    assert keyed.count("livegen_limit_refusals_total", limit="idle") == idle_closes


@pytest.mark.timeout(60, func_only=True)
async def test_a_session_ended_for_its_credential_raises_the_reason_not_a_reconnect(keyed):
    revocable, record = keyed.keys.create("to revoke")

    def revoked_script() -> GenerationError:
        with Client(keyed.url, api_key=revocable, reconnect=QUICK) as client:
            client.generate("a red fox")
            keyed.keys.revoke(record.id)
            with pytest.raises(GenerationError) as ended:
                client.receive(timeout=10)
            return ended.value

    script = asyncio.create_task(asyncio.to_thread(revoked_script))
    async with AsyncClient(keyed.url, token=await keyed.token_async(seconds=1), reconnect=QUICK) as client:
        await asyncio.sleep(2)  # a string token is never refreshed: the session ends with it
        with pytest.raises(GenerationError) as expired:
            await client.generate("a red fox")
    assert expired.value.error.code == "token_expired"
    assert (await script).error.code == "unauthorized"


@pytest.mark.timeout(60, func_only=True)
def test_a_provider_token_that_expires_anyway_is_replaced_by_a_reconnect(keyed):
    calls: list[float] = []

    def provide() -> str:  # a token too short to refresh: the session ends, the provider opens the next
        calls.append(time.monotonic())
        return keyed.token(seconds=1)

    with Client(keyed.url, token=provide, reconnect=QUICK) as client:
        session = client.hello.session
        time.sleep(2)
        frame = client.generate("a red fox", seed=4)
    assert frame.seed == 4 and client.hello.session != session and len(calls) == 2


@pytest.mark.timeout(60, func_only=True)
def test_the_cli_generates_with_an_api_key_from_its_option_or_the_environment(keyed, tmp_path):
    runner = CliRunner()
    out = tmp_path / "fox.png"
    result = runner.invoke(app, ["generate", "a fox", "-o", str(out), "--url", keyed.url, "--api-key", keyed.key])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    from_env = tmp_path / "from-env.png"
    result = runner.invoke(app, ["generate", "a fox", "-o", str(from_env), "--url", keyed.url],
                           env={"LIVEGEN_API_KEY": keyed.key})
    assert result.exit_code == 0, result.output
    assert from_env.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["generate", "a fox", "-o", str(tmp_path / "no.png"), "--url", keyed.url,
                                 "--api-key", keyed.key[:-4] + "AAAA"])
    assert result.exit_code == 1
    assert "unauthorized" in result.output
