"""Access control as a browser meets it, in Chromium (headless, driven by Playwright) against real
servers on loopback: the playground with API keys (its token, the refresh that outlives it, the
ping that keeps a quiet page open), the page under its own Content-Security-Policy, and a page
of another origin, which may neither open a session nor frame the playground."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from livegen.access.keys import KeyFile
from livegen.config import AccessConfig, LimitsConfig
from livegen.server.background import BackgroundServer, LoopbackServer
from tests.conftest import server_settings
from tests.test_playground import CHROMIUM, browser, playwright, screenshot, wait_for_new_frame  # noqa: F401

TOKEN_SECONDS = 3.0  # short, so a test outlives a token
IDLE_SECONDS = 1.5  # shorter than a token's refresh period, so only the ping (every 0.5 s) keeps a quiet page
EVIL = "evil.example"  # resolved to 127.0.0.1 by the browser alone (--host-resolver-rules)

# Opens a WebSocket as the page it runs in: whether it opened, what it heard (message types), how
# it closed. An open one is closed after its first message.
PROBE = """([url, protocols]) => new Promise((resolve) => {
  const result = {opened: false, heard: [], error: false, code: null};
  const ws = protocols.length ? new WebSocket(url, protocols) : new WebSocket(url);
  ws.onopen = () => { result.opened = true; };
  ws.onmessage = (event) => { result.heard.push(JSON.parse(event.data).type); ws.close(); };
  ws.onerror = () => { result.error = true; };
  ws.onclose = (event) => { result.code = event.code; resolve(result); };
  setTimeout(() => resolve(result), 10000);
})"""

# Installed before any of the page's own scripts: every CSP violation the page meets.
CSP_VIOLATIONS = """window.cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (event) => window.cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`));"""

# What would show the playground's session ending: its errors and its state leaving 'open'.
WATCH_SESSION = """() => {
  window.sessionEvents = [];
  window.livegen.addEventListener('error', ({detail}) => window.sessionEvents.push(`error ${detail.code}`));
  window.livegen.addEventListener('status', ({detail}) => detail.state === 'open' ||
    window.sessionEvents.push(`${detail.state} ${detail.reason ?? ''}`));
}"""


@pytest.fixture(scope="module")
def api_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("browser-keys") / "api-keys.json"
    secret, _ = KeyFile(path).create("test")
    return path, secret


@pytest.fixture(scope="module")
def keyed_server(tiny_sd: Path, api_key: tuple[Path, str]):
    """Needs a credential for everything; its tokens live 3 s and a session silent for 1.5 s is closed."""
    access = AccessConfig(keys_file=api_key[0], token_seconds=TOKEN_SECONDS,
                          limits=LimitsConfig(idle_seconds=IDLE_SECONDS))
    live = BackgroundServer(server_settings(tiny_sd, access=access))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def evil_site():
    """Another origin's page: no CSP of its own, so anything it tries is the browser and livegen's call."""
    page = HTMLResponse("<!doctype html><title>another site</title><p>Nothing to see here.</p>")
    app = Starlette(routes=[Route("/", lambda request: page), Route("/livez", lambda request: PlainTextResponse("ok"))])
    site = LoopbackServer(app)
    yield f"http://{EVIL}:{site.port}/"
    site.stop()


@pytest.fixture(scope="module")
def evil_browser(playwright) -> Browser:  # noqa: F811 (the fixture imported above)
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"])
    yield browser
    browser.close()


def open_playground(browser: Browser, live: BackgroundServer) -> Page:  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.console = []  # type: ignore[attr-defined]
    page.on("console", lambda message: page.console.append(message.text))  # type: ignore[attr-defined]
    page.add_init_script(CSP_VIOLATIONS)
    page.response = page.goto(live.url + "/")  # type: ignore[attr-defined]
    return page


def stream_url(live: BackgroundServer) -> str:
    return live.ws_url + "/v1/stream?codec=json"


def mint_token(keyed: BackgroundServer, key: str) -> str:
    response = httpx.post(keyed.url + "/v1/tokens", json={}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()["token"]


def test_the_playground_on_loopback_works_with_api_keys(browser: Browser, keyed_server):  # noqa: F811
    page = open_playground(browser, keyed_server)
    try:
        wait_for_new_frame(page, None)
        expect(page.locator("#status")).to_have_attribute("data-state", "open")
        assert page.evaluate("window.livegen.hello.expires_at") is not None, "the session runs on a token"
        screenshot(page, "keys")
        # The same socket without the page's token is refused: the token is what let the page in.
        bare = page.evaluate(PROBE, [stream_url(keyed_server), []])
        assert not bare["opened"] and bare["heard"] == [], bare
    finally:
        page.close()


def test_a_quiet_playground_keeps_its_session_past_its_token_and_the_idle_timeout(browser: Browser,  # noqa: F811
                                                                                   keyed_server):
    page = open_playground(browser, keyed_server)
    try:
        page.evaluate(WATCH_SESSION)
        first = wait_for_new_frame(page, None)
        session = page.evaluate("window.livegen.hello.session")
        expires_at = page.evaluate("window.livegen.hello.expires_at")
        # Nothing from the page but its upkeep until the first token and several idle spells are
        # over (the server checks both at least once a second).
        page.wait_for_timeout(max(0.0, expires_at - time.time()) * 1000 + 2500)
        assert page.evaluate("window.sessionEvents") == [], "the session ended"
        assert page.evaluate("window.livegen.hello?.session") == session
        assert page.evaluate("window.livegen.refreshes") >= 1, "no `refreshed` came"
        page.locator("#seed").fill("42")
        wait_for_new_frame(page, first)
        assert page.evaluate("window.livegen.hello.session") == session
        expect(page.locator("#status")).to_have_attribute("data-state", "open")
    finally:
        page.close()


# A client whose token source fails when the refresh asks: the session runs out and the server
# closes it; the reconnect asks again, gets a token and goes on in a new session.
EXPIRING_CLIENT = """async () => {
  const {LivegenClient} = await import('/static/livegen.js');
  const seen = [];
  let asked = 0;
  const tokenProvider = async () => {
    asked += 1;
    if (asked === 2) throw new Error('no token this time');
    return (await fetch('/v1/playground/token', {method: 'POST'})).json();
  };
  const client = new LivegenClient({tokenProvider, minDelayMs: 100});
  for (const name of ['hello', 'error', 'status', 'frame']) {
    client.addEventListener(name, ({detail}) => seen.push(
      name === 'hello' ? `hello ${detail.session}` : name === 'error' ? `error ${detail.code}`
        : name === 'status' ? detail.state : 'frame'));
  }
  window.expiring = {client, seen, asked: () => asked};
  client.connect();
}"""


def test_a_session_whose_token_runs_out_reconnects_with_a_fresh_one(browser: Browser, keyed_server):  # noqa: F811
    page = open_playground(browser, keyed_server)
    try:
        page.evaluate(EXPIRING_CLIENT)
        page.wait_for_function("() => window.expiring.seen.filter((e) => e.startsWith('hello')).length >= 2",
                               timeout=20_000)
        seen = page.evaluate("window.expiring.seen")
        hellos = [event for event in seen if event.startswith("hello")]
        assert hellos[0] != hellos[1], seen
        assert "error token_expired" in seen and "reconnecting" in seen, seen
        assert seen.index("error token_expired") < seen.index("reconnecting") < seen.index(hellos[1]), seen
        assert page.evaluate("window.expiring.asked()") >= 3
        assert page.evaluate("window.expiring.client.refreshes") == 0
        page.evaluate("window.expiring.client.send({prompt: 'a smiling cat'})")
        page.wait_for_function("() => window.expiring.seen.includes('frame')", timeout=15_000)
        page.evaluate("window.expiring.client.close()")
    finally:
        page.close()


def test_the_playground_runs_under_its_content_security_policy(browser: Browser, keyed_server):  # noqa: F811
    page = open_playground(browser, keyed_server)
    try:
        policy = page.response.headers["content-security-policy"]  # type: ignore[attr-defined]
        assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
        wait_for_new_frame(page, None)  # its token (fetch), its socket (ws:) and a frame (blob:) passed
        with page.expect_download():
            page.click("#save")
        page.locator("#seed").fill("11")
        page.wait_for_timeout(500)
        assert page.evaluate("window.cspViolations") == []
        refused = [text for text in page.console if "Content Security Policy" in text]  # type: ignore[attr-defined]
        assert refused == []
    finally:
        page.close()


@pytest.mark.parametrize("keys", [True, False], ids=["with keys", "without keys"])
def test_a_page_of_another_origin_cannot_open_a_session(evil_browser: Browser, evil_site: str, keyed_server, server,
                                                         api_key: tuple[Path, str], keys: bool):
    live = keyed_server if keys else server
    page = evil_browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    try:
        page.goto(evil_site)
        assert page.evaluate("location.origin") == evil_site.rstrip("/")
        attempts = [[]]
        if keys:  # even with a valid token (one its backend might have minted), the page's origin is refused
            attempts.append(["livegen", "bearer." + mint_token(keyed_server, api_key[1])])
        for protocols in attempts:
            result = page.evaluate(PROBE, [stream_url(live), protocols])
            assert not result["opened"] and result["heard"] == [] and result["code"] == 1006, result
        # Each time the browser reached the server, which answered the upgrade 403 (the Origin check).
        assert sum("WebSocket" in text and "403" in text for text in console) == len(attempts), console
        # Nor can it take the playground's own token: a cross-origin POST is refused.
        minted = page.evaluate("""url => fetch(url, {method: 'POST'}).then((r) => r.status, (e) => String(e))""",
                               live.url + "/v1/playground/token")
        assert minted != 200, minted
    finally:
        page.close()
    # Control: the same probe from the server's own page opens a session.
    own = open_playground(evil_browser, server)
    try:
        result = own.evaluate(PROBE, [stream_url(server), []])
        assert result["opened"] and result["heard"] == ["hello"], result
    finally:
        own.close()


def test_a_page_of_another_origin_cannot_frame_the_playground(evil_browser: Browser, evil_site: str, server):
    page = evil_browser.new_page()
    try:
        page.goto(evil_site)
        with page.expect_event("console", lambda message: "frame-ancestors" in message.text, timeout=10_000):
            page.evaluate("url => { const frame = document.createElement('iframe'); frame.src = url;"
                          " document.body.append(frame); }", server.url + "/")
        framed = [frame for frame in page.frames if frame != page.main_frame]
        assert len(framed) == 1
        assert framed[0].evaluate("document.getElementById('status')") is None, "the playground ran in the frame"
        screenshot(page, "framed")
    finally:
        page.close()
