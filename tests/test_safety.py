"""Safety inside the stream: prompt moderation, the output check, the watermark and Content Credentials."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from livegen.cli import app
from livegen.config import Settings, embedded_model
from livegen.client import AsyncClient, Client, GenerationError
from livegen.models.base import ModelError
from livegen.protocol import Blocked, Exported, Frame
from livegen.safety import watermark
from livegen.safety.checks import SafetyCheckerModel, load_checker
from livegen.safety.moderation import Moderator, Policy, PolicyError, emoji_spelled_out, minilm_embedder
from livegen.safety.provenance import read_manifest
from livegen.server.background import BackgroundServer
from tests.conftest import png_bytes, server_settings

PROMPTS = json.loads((Path(__file__).parent / "data" / "moderation_prompts.json").read_text())


# ---------------------------------------------------------------- moderation


@pytest.fixture(scope="module")
def moderator() -> Moderator:
    return Moderator(Policy.load(), minilm_embedder())


@pytest.mark.parametrize("item", PROMPTS["blocked"], ids=lambda item: item["prompt"][:30])
def test_the_default_policy_blocks_harmful_prompts_and_their_paraphrases(moderator: Moderator, item: dict):
    verdict = moderator.check(item["prompt"])
    assert verdict.blocked and verdict.category == item["category"], verdict


def test_the_default_policy_lets_everyday_prompts_through(moderator: Moderator):
    # Knives, skulls, blood drops and bikinis are emoji; the policy must not block them.
    assert [p for p in PROMPTS["allowed"] if moderator.check(p).blocked] == []


def test_terms_and_patterns_match_whole_words_in_any_case(tmp_path: Path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[[category]]\nname = "fruit"\nterms = ["durian"]\npatterns = [\'\\bjack\\s*fruit\']\n')
    moderator = Moderator(Policy.load(policy), None)
    assert moderator.check("A DURIAN on a plate").category == "fruit"
    assert moderator.check("a jack fruit").reason.startswith("pattern")
    assert not moderator.check("durians").blocked and not moderator.check("a banana").blocked


@pytest.fixture(scope="module")
def bee_policy(tmp_path_factory) -> Policy:
    policy = tmp_path_factory.mktemp("policy") / "policy.toml"
    policy.write_text('[[category]]\nname = "insects"\nterms = ["bee"]\n')
    return Policy.load(policy)


def test_a_typed_emoji_is_checked_by_its_name_and_aliases(bee_policy: Policy):
    # Models draw what an emoji shows (the embedded model's concept index reads "a 🐝" as "a honeybee")
    verdict = Moderator(bee_policy, None).check("a 🐝 on a 🌻")
    assert verdict.category == "insects" and verdict.reason == "term 'bee' in 'a honeybee (bee) on a sunflower', its emoji named"
    assert emoji_spelled_out("a 🔫, é") == "a water pistol (gun) , é" and emoji_spelled_out("é, plain") == "é, plain"
    assert len(Moderator(bee_policy, None).check("🌻" * 999 + "🐝").reason) < 200  # the reading quoted in part


def test_a_prompt_is_blocked_by_what_the_model_draws_it_as(bee_policy: Policy):
    moderator = Moderator(bee_policy, None, drawn=lambda prompt: "a bee" if "honey" in prompt else None)
    assert moderator.check("a honey maker").reason == "drawn as 'a bee', term 'bee'"
    assert not moderator.check("a flower").blocked and moderator.check("a bee").reason == "term 'bee'"
    assert moderator.check.cache_info().misses == 3  # one verdict a prompt, what it is drawn as inside it


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(["🐝", "🌻", "\u200d", "\ufe0f", "👍", "🏿", "b", "e", "E", " ", "é", "-"]), max_size=60))
@example("b\ufe0fee")  # a variation selector shows nothing alone: it cannot hide a term
def test_a_term_is_found_typed_or_as_an_emoji_and_nowhere_else(bee_policy: Policy, prompt: str):
    shown = prompt.replace("\ufe0f", "")
    found = "🐝" in prompt or any(re.search(r"\bbee\b", text, re.I) for text in (prompt, shown))
    assert Moderator(bee_policy, None).check(prompt).blocked == found


def test_the_threshold_decides_what_similarity_blocks(tmp_path: Path):
    policy = tmp_path / "policy.toml"
    policy.write_text('threshold = 0.99\n[[category]]\nname = "cats"\ndescriptions = ["a photo of a cat"]\n')
    strict = Moderator(Policy.load(policy), minilm_embedder())
    assert strict.check("a photo of a cat").blocked  # the description itself: similarity 1
    assert not strict.check("a picture of a kitten").blocked
    loose = Moderator(Policy(strict.policy.categories, threshold=0.5), minilm_embedder())
    assert loose.check("a picture of a kitten").blocked


@pytest.mark.parametrize("text, message", [
    ("threshold = [", "cannot read"),
    ('[[category]]\nterms = ["x"]\n', "needs a name"),
    ('[[category]]\nname = "x"\npatterns = ["("]\n', "error"),
    ("threshold = 2\n", "thresholds are cosine similarities"),
])
def test_a_bad_policy_file_is_a_clear_error(tmp_path: Path, text: str, message: str):
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    with pytest.raises(PolicyError, match=message) as error:
        Policy.load(policy)
    assert str(policy) in str(error.value)


# ---------------------------------------------------------------- in the stream


@pytest.fixture(scope="module")
def checked(tiny_sd):
    """A server whose output check is the recording test checker, with a fixed server id."""
    settings = server_settings(tiny_sd)
    settings.safety = settings.safety.model_copy(update={
        "output_checker": "tests.checkers:RecordingChecker", "server_id": "safety-test"})
    live = BackgroundServer(settings)
    yield live
    live.stop()


def recorder(server: BackgroundServer):
    return server.engine.runners["tiny"].safety.checker


async def test_a_blocked_prompt_gets_a_blocked_outcome_and_no_compute(checked):
    checker = recorder(checked)
    checker.clear()
    async with AsyncClient(checked.ws_url) as client:
        request = await client.send("a severed head dripping with blood", format="png")
        outcome = await client.receive()
        assert isinstance(outcome, Blocked) and outcome.id == request
        assert (outcome.stage, outcome.category) == ("prompt", "graphic_violence")
        await client.send("a cat", blend_prompt="explicit porn", blend=0.5)
        assert (await client.receive()).category == "sexual_explicit"  # the blend prompt is checked too
        assert not checker.flagged and not checker.passed  # nothing was generated for them
        request = await client.send("a calm lake")  # the session stays usable: this one runs
        outcome = await client.receive()
        assert outcome.id == request and (isinstance(outcome, Frame) or outcome.stage == "output")
        assert len(checker.flagged) + len(checker.passed) == 1
    metrics = httpx.get(checked.url + "/metrics").text
    assert 'livegen_blocked_total{category="graphic_violence",stage="prompt"} 1.0' in metrics


@pytest.fixture(scope="module")
def no_honeybees(tmp_path_factory):
    """The embedded model, served under a policy with one term: "honeybee"."""
    policy = tmp_path_factory.mktemp("policy") / "policy.toml"
    policy.write_text('[[category]]\nname = "insects"\nterms = ["honeybee"]\n')
    settings = Settings(models=[embedded_model()], speech=None, warmup_runs=1, port=0)
    settings.safety = settings.safety.model_copy(update={"policy": policy})
    live = BackgroundServer(settings)
    yield live
    live.stop()


async def test_a_policy_stops_a_picture_the_embedded_model_would_draw_from_other_words(no_honeybees):
    # Its concept index draws "a bug that makes honey" as the honeybee: a policy naming the
    # honeybee stops that picture too, and the emoji typed; other prompts still draw.
    async with AsyncClient(no_honeybees.ws_url) as client:
        for prompt, reason in [("a bug that makes honey", "drawn as 'honeybee', term 'honeybee'"),
                               ("🐝", "term 'honeybee' in 'honeybee (bee)', its emoji named")]:
            await client.send(prompt)
            outcome = await client.receive()
            assert isinstance(outcome, Blocked) and outcome.category == "insects" and reason in outcome.message, outcome
        await client.send("a slice of pizza")
        assert isinstance(await client.receive(), Frame)


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.sampled_from(["🐝", "🍯", "🌻", "\u200d", "\ufe0f", "🏿", "a", "bee", "honey", " ", "\n", "é"]),
                max_size=60).map("".join) | st.text(max_size=200))
def test_any_prompt_is_drawn_or_blocked_by_what_it_names(no_honeybees, prompt: str):
    with Client(no_honeybees.url) as client:
        try:
            frame = client.generate(prompt, format="jpeg")
        except GenerationError as error:  # blocked: 403 with its reason
            assert error.error.code == "blocked" and "(insects: " in error.error.message, error
        else:
            assert "🐝" not in prompt and frame.model == "emoji"


def test_http_generate_answers_a_blocked_prompt_with_403(checked):
    response = httpx.post(checked.url + "/v1/generate", json={"prompt": "a pile of mutilated corpses"})
    assert response.status_code == 403
    assert response.json()["type"] == "blocked" and response.json()["stage"] == "prompt"


def nearest(image: np.ndarray, candidates: list[np.ndarray]) -> float:
    return min(float(np.abs(image.astype(np.int16) - c.astype(np.int16)).mean()) for c in candidates)


@pytest.mark.parametrize("mode", ["text", "image", "camera"])
async def test_no_flagged_frame_ever_reaches_a_client(checked, mode: str):
    """Every input gets one outcome; each frame the checker flagged became `blocked`, and every
    frame the client received is one the checker passed (watermarked after the check)."""
    checker = recorder(checked)
    checker.clear()
    sent, outcomes = [], []
    # A camera sends faster than frames come back (latest wins): bursts of three inputs, each
    # burst answered before the next, so that at least one input of each runs.
    burst = 3 if mode == "camera" else 1
    async with AsyncClient(checked.ws_url) as client:
        for i in range(24 * burst):
            fields: dict = {"format": "png", "seed": i}
            if mode != "text":
                fields |= {"image": png_bytes(color=(7 * i % 256, 40, 200 - 2 * i)), "strength": 0.7}
            if mode == "camera":
                fields["similarity_filter"] = 0.999
            sent.append(await client.send(f"input {i}", **fields))
            if len(sent) % burst == 0:
                while len(outcomes) < len(sent):
                    outcomes.append(await client.receive())
    assert sorted(o.id for o in outcomes) == sorted(sent)
    frames = [o for o in outcomes if isinstance(o, Frame)]
    blocked = [o for o in outcomes if isinstance(o, Blocked)]
    assert frames and blocked, "the test checker flags about half the frames"
    assert all(b.stage == "output" and b.category == "test_flag" for b in blocked)
    assert len(blocked) == len(checker.flagged) and len(frames) == len(checker.passed)
    for frame in frames:
        pixels = np.asarray(Image.open(io.BytesIO(frame.image)).convert("RGB"))
        assert nearest(pixels, checker.passed) < 2.0  # the watermark moves pixels a little
        assert nearest(pixels, checker.flagged) > 2.0


async def test_every_frame_carries_the_servers_watermark_with_its_frame_number(checked):
    async with AsyncClient(checked.ws_url) as client:
        numbers = []
        for i in range(6):
            request = await client.send("a lighthouse", seed=100 + i, format="png")
            while (outcome := await client.receive()).id != request:
                pass
            if isinstance(outcome, Frame):
                reading = watermark.read(np.asarray(Image.open(io.BytesIO(outcome.image)).convert("RGB")))
                assert reading.detected and reading.payload.server == watermark.server_tag("safety-test")
                numbers.append(reading.payload.counter)
    assert numbers and numbers == sorted(set(numbers))


def test_readyz_reports_the_safety_stages(checked, server):
    assert httpx.get(checked.url + "/readyz").json()["safety"]["output_checker"] == "tests.checkers:RecordingChecker"
    plain = httpx.get(server.url + "/readyz").json()["safety"]
    assert plain["output_checker"] is None and plain["watermark"] is True
    assert plain["moderation"].endswith("policy.toml") and plain["content_credentials"]


# ---------------------------------------------------------------- the Stable Diffusion safety checker


def tiny_safety_checker(path: Path, flag_everything: bool) -> Path:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = StableDiffusionSafetyChecker(config)
    with torch.no_grad():  # a cosine distance is at most 1: a weight of -2 flags every image, 2 none
        model.concept_embeds_weights.fill_(-2.0 if flag_everything else 2.0)
        model.special_care_embeds_weights.fill_(2.0)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32, "image_mean": [0.5] * 3,
                                                               "image_std": [0.5] * 3}))
    return path


def test_the_safety_checker_loads_from_a_folder_and_flags_on_the_frames_device(tmp_path: Path):
    images = torch.randint(0, 255, (3, 64, 48, 3), dtype=torch.uint8)
    flag_all = load_checker(str(tiny_safety_checker(tmp_path / "all", True)), torch.device("cpu"))
    assert isinstance(flag_all, SafetyCheckerModel) and flag_all.size == 32
    assert flag_all(images) == ["nsfw"] * 3
    flag_none = load_checker(str(tiny_safety_checker(tmp_path / "none", False)), torch.device("cpu"))
    assert flag_none(images) == [None] * 3


def test_a_missing_checker_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelError, match="no Stable Diffusion safety checker"):
        load_checker(str(tmp_path / "nowhere"), torch.device("cpu"))
    with pytest.raises(ModelError, match="cannot import the output checker"):
        load_checker("tests.checkers:NoSuchChecker", torch.device("cpu"))


def test_a_server_with_the_safety_checker_sends_no_flagged_frame(tiny_sd, tmp_path: Path):
    settings = server_settings(tiny_sd)
    settings.safety = settings.safety.model_copy(
        update={"output_checker": str(tiny_safety_checker(tmp_path / "checker", True))})
    live = BackgroundServer(settings)
    try:
        with Client(live.ws_url) as client:
            with pytest.raises(GenerationError, match="blocked: output"):
                client.generate("a sunny beach")
    finally:
        live.stop()


# ---------------------------------------------------------------- Content Credentials


def test_a_streamed_frame_exports_with_valid_content_credentials(server, signing_keys: Path):
    with Client(server.ws_url) as client:
        frame = client.generate("a red bicycle", seed=5, steps=2, format="png")
        exported = client.export(frame.id)
        with pytest.raises(GenerationError, match="unknown_frame"):
            client.export("never-sent")
    assert isinstance(exported, Exported) and exported.format == "png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(exported.image))),
                          np.asarray(Image.open(io.BytesIO(frame.image))))  # the same pixels, signed
    report = read_manifest(exported.image, "image/png", signing_keys / "root.pem")
    assert report.valid and report.trusted
    assert report.actions[0]["action"] == "c2pa.created"
    assert report.actions[0]["digitalSourceType"].endswith("trainedAlgorithmicMedia")
    generation = report.generation
    assert (generation["model"], generation["steps"], generation["seed"], generation["size"]) == ("tiny", 2, 5, "64x64")
    assert generation["prompt_sha256"] == hashlib.sha256(b"a red bicycle").hexdigest()


def test_http_generate_returns_a_signed_image(server, signing_keys: Path):
    response = httpx.post(server.url + "/v1/generate", json={"prompt": "a kite", "format": "jpeg"}, timeout=60)
    assert response.status_code == 200
    report = read_manifest(response.content, "image/jpeg", signing_keys / "root.pem")
    assert report.valid and report.generation["model"] == "tiny"


def test_verify_reports_watermark_and_credentials_and_fails_a_tampered_file(server, signing_keys: Path,
                                                                            tmp_path: Path):
    signed = httpx.post(server.url + "/v1/generate", json={"prompt": "a kite", "format": "png"}, timeout=60).content
    path = tmp_path / "kite.png"
    path.write_bytes(signed)
    result = CliRunner().invoke(app, ["verify", str(path), "--json", "--root", str(signing_keys / "root.pem")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["watermark"]["detected"] and report["watermark"]["scheme"] == "livegen-small"
    assert report["content_credentials"]["valid"] and report["content_credentials"]["trusted"]

    jpeg = httpx.post(server.url + "/v1/generate", json={"prompt": "a kite", "format": "jpeg"}, timeout=60).content
    tampered = bytearray(jpeg)
    scan = tampered.index(b"\xff\xda") + 20  # inside the entropy-coded pixels, after the manifest
    tampered[scan] ^= 0x55
    (tmp_path / "tampered.jpg").write_bytes(bytes(tampered))
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "tampered.jpg"), "--root", str(signing_keys / "root.pem")])
    assert result.exit_code == 1
    assert "INVALID" in result.output


def test_unusable_signing_keys_keep_the_server_not_ready_and_say_why(tiny_sd, tmp_path: Path):
    not_a_folder = tmp_path / "keys"
    not_a_folder.write_text("a file where the keys folder should be")
    settings = server_settings(tiny_sd)
    settings.safety = settings.safety.model_copy(update={"keys": not_a_folder})
    live = BackgroundServer(settings, wait_ready=False)
    try:
        for _ in range(200):
            body = httpx.get(live.url + "/readyz").json()
            if body["error"]:
                break
            time.sleep(0.05)
        assert not body["ready"] and str(not_a_folder) in body["error"] and "LIVEGEN_SAFETY__KEYS" in body["error"]
    finally:
        live.stop()


def test_keys_init_makes_a_chain_and_refuses_to_overwrite_it(tmp_path: Path):
    first = CliRunner().invoke(app, ["keys", "init", "--dir", str(tmp_path)])
    assert first.exit_code == 0 and (tmp_path / "root.pem").is_file()
    again = CliRunner().invoke(app, ["keys", "init", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
