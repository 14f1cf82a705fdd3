"""The playground page in Debian's Chromium (headless, driven by Playwright) against a real server
on loopback with the embedded model. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from livegen.config import ModelConfig, Settings
from livegen.safety.provenance import read_manifest
from livegen.server.background import BackgroundServer, ServeProcess, free_port

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
               "--autoplay-policy=no-user-gesture-required"]

if CHROMIUM is None:
    if os.environ.get("LIVEGEN_REQUIRE_BROWSER"):
        raise RuntimeError("browser tests need Debian's chromium: apt-get install chromium")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

# The pixels the page shows: their spread (a blank frame has none) and a digest to compare frames.
OUTPUT_PIXELS = """() => {
  const img = document.getElementById('output');
  const canvas = Object.assign(document.createElement('canvas'), {width: img.naturalWidth, height: img.naturalHeight});
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, squares = 0, digest = 0;
  for (let i = 0; i < data.length; i += 1) {
    sum += data[i]; squares += data[i] * data[i]; digest = (digest * 31 + data[i]) >>> 0;
  }
  const mean = sum / data.length;
  return {width: canvas.width, std: Math.sqrt(squares / data.length - mean * mean), digest};
}"""


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright) -> Browser:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FAKE_CAMERA)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def emoji_server():
    live = BackgroundServer(Settings(warmup_runs=1))
    yield live
    live.stop()


@pytest.fixture
def page(browser: Browser, emoji_server: BackgroundServer) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.requests = []  # type: ignore[attr-defined]
    page.on("request", lambda request: page.requests.append(request.url))  # type: ignore[attr-defined]
    page.goto(emoji_server.url + "/")
    yield page
    page.close()


def frame_id(page: Page) -> str | None:
    return page.get_attribute("#output", "data-frame-id")


def wait_for_new_frame(page: Page, after: str | None, timeout: float = 15_000) -> str:
    page.wait_for_function(
        "after => { const id = document.getElementById('output').dataset.frameId;"
        " return id !== undefined && id !== after && document.getElementById('output').complete; }",
        arg=after, timeout=timeout)
    return frame_id(page)  # type: ignore[return-value]


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"playground-{name}.png")


def test_typing_a_prompt_produces_a_new_image_with_every_asset_served_locally(page: Page, emoji_server):
    first = wait_for_new_frame(page, None)
    expect(page.locator("#status")).to_have_attribute("data-state", "open")
    cat = page.evaluate(OUTPUT_PIXELS)
    assert cat["width"] == 64 and cat["std"] > 10, "the first frame is blank"

    page.fill("#prompt", "")
    page.locator("#prompt").press_sequentially("a red apple", delay=30)  # every key sends an input
    page.wait_for_function("() => window.livegen.inFlight.size === 0 && !window.livegen.waiting")
    wait_for_new_frame(page, first)
    time.sleep(0.3)  # let the last keystroke's frame land
    apple = page.evaluate(OUTPUT_PIXELS)
    assert apple["std"] > 10 and apple["digest"] != cat["digest"]
    expect(page.locator("#output-caption")).to_have_text("Output: drawn as “red apple”")  # what the model drew it as
    screenshot(page, "prompt")

    local = (emoji_server.url, emoji_server.ws_url, "blob:", "data:")
    assert page.requests and all(url.startswith(local) for url in page.requests), page.requests


@pytest.mark.parametrize("slider, value", [("seed", "42"), ("steps", "3"), ("blend", "0.5"), ("guidance", "6")])
def test_moving_a_slider_produces_a_new_frame(page: Page, slider: str, value: str):
    before = wait_for_new_frame(page, None)
    digest = page.evaluate(OUTPUT_PIXELS)["digest"]
    page.locator(f"#{slider}").fill(value)
    wait_for_new_frame(page, before)
    assert page.text_content(f"#{slider}-value") == value
    assert page.evaluate(OUTPUT_PIXELS)["digest"] != digest


def test_model_and_size_selectors_list_what_the_server_serves(page: Page):
    wait_for_new_frame(page, None)
    assert page.locator("#model option").all_text_contents() == ["emoji"]
    assert page.locator("#size option").all_text_contents() == ["64x64"]


def test_hud_shows_rate_latency_and_server_timings(page: Page):
    last = wait_for_new_frame(page, None)
    for seed in range(10, 16):  # a few frames to measure
        page.locator("#seed").fill(str(seed))
        last = wait_for_new_frame(page, last)
    page.wait_for_function("() => parseFloat(document.getElementById('hud-fps').textContent) > 0")
    assert float(page.text_content("#hud-fps")) > 0
    for field in ("#hud-p50", "#hud-p95"):
        text = page.text_content(field)
        assert text.endswith(" ms") and float(text.removesuffix(" ms")) > 0
    assert int(page.text_content("#hud-frames")) >= 7
    stages = page.locator("#hud-timings dt").all_text_contents()
    assert {"queue", "denoise", "decode", "total"} <= set(stages)
    screenshot(page, "hud")


def test_save_downloads_the_current_frame_with_content_credentials(page: Page, signing_keys: Path):
    wait_for_new_frame(page, None)
    with page.expect_download() as download:
        page.click("#save")
    data = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename.startswith("livegen-emoji-seed7-")
    assert download.value.suggested_filename.endswith(".jpg")
    assert data[:2] == b"\xff\xd8"
    manifest = read_manifest(data, "image/jpeg", signing_keys / "root.pem")
    assert manifest.valid and manifest.trusted
    assert manifest.generation["model"] == "emoji" and manifest.generation["seed"] == 7


def test_camera_filter_streams_output_frames_with_a_bounded_number_in_flight(page: Page):
    page.wait_for_function("() => window.livegen.hello?.ready")
    page.uncheck("#skip-still")  # Chromium's fake camera barely moves; count every frame here
    page.click("#camera-toggle")
    expect(page.locator("#camera-view")).to_be_visible()
    most_in_flight = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and int(page.text_content("#hud-frames")) < 15:
        most_in_flight = max(most_in_flight, page.evaluate("window.livegen.inFlight.size"))
        time.sleep(0.05)
    assert int(page.text_content("#hud-frames")) >= 15
    assert most_in_flight <= page.evaluate("window.livegen.maxInFlight") == 3
    stats = page.evaluate("window.livegen.stats.summary()")
    assert stats["dropped"] == 0, "the camera sends only when a slot is free, so nothing waits in the page"
    assert page.evaluate("document.getElementById('camera').videoWidth") > 0
    screenshot(page, "camera")
    page.click("#camera-toggle")
    expect(page.locator("#camera-view")).to_be_hidden()


def test_camera_filter_skips_still_frames(page: Page):
    page.wait_for_function("() => window.livegen.hello?.ready")
    page.click("#camera-toggle")  # "Skip still frames" is on by default
    page.wait_for_function("() => window.livegen.stats.skipped >= 5 && window.livegen.stats.frames >= 1",
                           timeout=20_000)


def test_the_speak_box_streams_and_plays_audio(page: Page):
    page.wait_for_function("() => window.livegen.hello?.ready")
    expect(page.locator("#speech")).to_be_visible()
    assert page.locator("#voice option").count() > 0
    page.click("#speak")
    page.wait_for_function("() => window.livegenSpeech.chunks >= 5", timeout=30_000)
    ttfa = page.text_content("#speech-ttfa")
    assert ttfa.endswith(" ms") and float(ttfa.removesuffix(" ms")) > 0
    assert page.evaluate("window.livegenSpeech.context.state") == "running"
    assert page.evaluate("window.livegenSpeech.nextTime > window.livegenSpeech.context.currentTime"), \
        "chunks are scheduled ahead of the playback clock"
    screenshot(page, "speech")
    page.click("#stop-speech")
    assert page.evaluate("window.livegenSpeech.sources.length") == 0


def test_denied_camera_is_reported_in_the_page(playwright, emoji_server):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--use-fake-device-for-media-stream"])
    try:
        page = browser.new_page()
        page.goto(emoji_server.url + "/")
        page.wait_for_function("() => window.livegen.hello?.ready")
        page.click("#camera-toggle")
        expect(page.locator("#status")).to_have_attribute("data-state", "error")
        expect(page.locator("#status")).to_contain_text("permission denied")
        screenshot(page, "camera-denied")
    finally:
        browser.close()


def test_a_page_opened_while_the_server_warms_says_so_then_starts(browser: Browser):
    live = BackgroundServer(Settings(warmup_runs=150), wait_ready=False)  # a few seconds of warm-up
    try:
        page = browser.new_page()
        page.goto(live.url + "/")
        expect(page.locator("#status")).to_have_attribute("data-state", "warming")
        expect(page.locator("#status")).to_contain_text("warming")
        screenshot(page, "warming")
        expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=60_000)
        wait_for_new_frame(page, None)
    finally:
        live.stop()


def test_missing_model_is_reported_in_the_page(browser: Browser, tmp_path: Path):
    missing = tmp_path / "no-such-model"
    live = BackgroundServer(Settings(models=[ModelConfig(source=str(missing), name="gone")], speech=None),
                            wait_ready=False)
    try:
        page = browser.new_page()
        page.goto(live.url + "/")
        expect(page.locator("#status")).to_have_attribute("data-state", "error", timeout=15_000)
        expect(page.locator("#status")).to_contain_text("no-such-model")
        screenshot(page, "model-missing")
    finally:
        live.stop()


def test_killing_and_restarting_the_server_shows_the_reconnect(browser: Browser):
    port = free_port()
    server = ServeProcess(port)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(server.url + "/")
        before = wait_for_new_frame(page, None)
        server.kill()
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
        expect(page.locator("#status")).to_contain_text("reconnecting")
        screenshot(page, "reconnecting")
        server = ServeProcess(port)
        expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=20_000)
        page.locator("#seed").fill("99")
        wait_for_new_frame(page, before)
    finally:
        page.close()
        server.kill()
