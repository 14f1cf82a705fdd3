"""Reply moderation inside the speech stream (issue 24): each phrase is checked against the speech
policy before it is synthesized; a blocked phrase ends the utterance with `blocked` (stage
`speech`), and what was already spoken stays."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import httpx
import pytest

from livegen.client import AsyncClient, GenerationError
from livegen.config import SpeechConfig
from livegen.protocol import Audio, Blocked, SpeechEnd
from livegen.safety.moderation import SPEECH_POLICY, Moderator, Policy, minilm_embedder
from livegen.server.background import BackgroundServer
from tests.conftest import server_settings

REPLIES = json.loads((Path(__file__).parent / "data" / "speech_replies.json").read_text())


@pytest.fixture(scope="module")
def moderator() -> Moderator:
    return Moderator(Policy.load(SPEECH_POLICY), minilm_embedder())


@pytest.mark.parametrize("item", REPLIES["blocked"], ids=lambda item: item["reply"][:30])
def test_the_speech_policy_blocks_harmful_replies(moderator: Moderator, item: dict):
    verdict = moderator.check(item["reply"])
    assert verdict.blocked and verdict.category == item["category"], verdict


def test_medical_legal_and_everyday_replies_pass_with_a_margin(moderator: Moderator):
    # A crisis line, a dose, a safety warning about bleach and ammonia: a voice agent must say these.
    assert [reply for reply in REPLIES["allowed"] if moderator.check(reply).blocked] == []
    policy, embed = Policy.load(SPEECH_POLICY), minilm_embedder()
    for category in policy.categories:
        threshold = category.threshold or policy.threshold
        closest = (embed(REPLIES["allowed"]) @ embed(list(category.descriptions)).T).max()
        assert closest <= threshold - 0.1, (category.name, closest)


def test_speech_moderation_starts_no_openmp_team_on_its_thread(moderator: Moderator):
    # An OpenMP team is started per thread and lives as long as it. A second one beside the image
    # runner's (torch pooling the policy's phrases on the speech thread) made every picture ~1.5x
    # slower on the 2-core CPU: libgomp's workers stop spinning when more are alive than cores.
    built, done = threading.Event(), threading.Event()
    ids = []

    def speech_thread() -> None:  # what the speech runner does at start, then stays alive
        ids.append(str(threading.get_native_id()))
        Moderator(Policy.load(SPEECH_POLICY), minilm_embedder()).check("Ready when you are, let's begin.")
        built.set()
        done.wait()

    before = set(os.listdir("/proc/self/task"))  # the fixture started the tokenizer's threads
    thread = threading.Thread(target=speech_thread)
    thread.start()
    try:
        assert built.wait(60)
        assert set(os.listdir("/proc/self/task")) - before == set(ids)  # threads that ended meanwhile don't count
    finally:
        done.set()
        thread.join()


@pytest.fixture(scope="module")
def speech_server(tiny_sd):
    live = BackgroundServer(server_settings(tiny_sd, speech=SpeechConfig(max_text_chars=600)))
    yield live
    live.stop()


async def outcomes(client: AsyncClient, utterance: str) -> list:
    got = []
    while not got or not isinstance(got[-1], SpeechEnd | Blocked) or got[-1].id != utterance:
        got.append(await asyncio.wait_for(client.receive(), 60))
    return [o for o in got if o.id == utterance]


async def test_a_blocked_phrase_ends_the_reply_and_what_was_spoken_stays(speech_server):
    harmful = next(item["reply"] for item in REPLIES["blocked"] if item["category"] == "weapons_instructions")
    async with AsyncClient(speech_server.ws_url) as client:
        await client.speak(f"Sure, I can tell you about that. {harmful} And then you are done.", id="r1")
        got = await outcomes(client, "r1")
        blocked = got[-1]
        assert isinstance(blocked, Blocked) and blocked.stage == "speech"
        assert blocked.category == "weapons_instructions"
        audio = [o for o in got if isinstance(o, Audio)]
        assert [a.seq for a in audio] == list(range(len(audio)))  # the first phrase was spoken, in order
        spoken = sum(len(a.pcm) for a in audio)
        # Nothing of the blocked phrase, or of what followed it, was synthesized: the audio is the
        # first phrase's alone.
        alone = await client.say("Sure, I can tell you about that.")
        assert spoken == pytest.approx(sum(len(c.pcm) for c in alone.chunks), rel=0.05)
        assert alone.end.timings["moderation_ms"] > 0  # the check ran, and its cost is reported
        with pytest.raises(GenerationError, match="blocked"):
            await client.say("I will find you and I will kill you.")
        await client.say("Okay, what else can I help with?")  # the session goes on
    readyz = httpx.get(speech_server.url + "/readyz").json()
    assert readyz["safety"]["speech_moderation"] == str(SPEECH_POLICY)


def test_speech_moderation_can_be_turned_off(tiny_sd):
    settings = server_settings(tiny_sd, speech=SpeechConfig())
    settings.safety = settings.safety.model_copy(update={"speech_moderation": False})
    live = BackgroundServer(settings)
    try:
        assert httpx.get(live.url + "/readyz").json()["safety"]["speech_moderation"] is None
    finally:
        live.stop()
