"""Speech over the stream: a real server on loopback with the shipped Kokoro model and a tiny image model."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import httpx
import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from websockets.sync.client import connect

from livegen.cli import app
from livegen.client import AsyncClient, Client, GenerationError
from livegen.config import Settings, SpeechConfig
from livegen.engine.metrics import EngineMetrics
from livegen.engine.session import Session
from livegen.engine.speech_runner import FIRST_PIECE_S, MIN_PIECE_S, SpeechRunner, Utterance
from livegen.engine.workers import Workers
from livegen.models.voice import Phrase
from livegen.protocol import Audio, Cancelled, Error, SpeechEnd
from livegen.safety import audio_watermark
from livegen.safety.provenance import read_manifest
from livegen.safety.watermark import server_tag
from livegen.server.background import BackgroundServer, poll
from tests.conftest import server_settings

SENTENCE = "Hello there, this is livegen speaking. It streams each phrase as soon as it is ready."


@pytest.fixture(scope="module")
def speech_server(tiny_sd):
    live = BackgroundServer(server_settings(tiny_sd, speech=SpeechConfig(max_text_chars=300)))
    yield live
    live.stop()


def samples(chunks: list[Audio]) -> np.ndarray:
    return np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")


async def outcomes_until(client: AsyncClient, done, timeout: float = 30) -> list:
    got = []
    while not got or not done(got[-1]):
        got.append(await asyncio.wait_for(client.receive(), timeout))
    return got


async def test_hello_names_the_speech_models_and_every_voice(speech_server):
    async with AsyncClient(speech_server.ws_url) as client:
        speech = client.hello.speech
    assert speech.sample_rate == 24000 and speech.name == "en_US-joe-medium, kokoro-82m-int8"
    assert speech.default_voice == "en_US-joe-medium"
    assert speech.voices == ["en_US-joe-medium", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


async def test_each_text_gets_its_languages_voice_and_a_named_voice_of_either_model_speaks(speech_server):
    async with AsyncClient(speech_server.ws_url) as client:
        japanese = await client.say("こんにちは、今日はいい天気ですね。")  # kana: Kokoro's Japanese voice
        accented = await client.say("Good morning.", voice="jm_kumo")  # English text, a Japanese voice named
        await client.speak("こんにちは。", id="wrong", voice="en_US-joe-medium")
        error = await asyncio.wait_for(client.receive(), 10)
    for speech in (japanese, accented):
        assert speech.end.samples > 0.5 * speech.sample_rate and speech.sample_rate == 24000
    assert (error.type, error.id, error.code) == ("error", "wrong", "unsupported_characters")


async def test_a_sentence_streams_in_order_with_a_final_marker(speech_server):
    async with AsyncClient(speech_server.ws_url) as client:
        heard = []
        speech = await client.say(SENTENCE, on_audio=heard.append)
    assert [c.seq for c in speech.chunks] == list(range(len(speech.chunks))) and heard == speech.chunks
    assert len(speech.chunks) > 5, "audio goes out in small chunks"
    audio = samples(speech.chunks)
    assert speech.end.samples == len(audio) and speech.end.chunks == len(speech.chunks)
    assert 2.0 < len(audio) / speech.sample_rate < 15.0
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 300, "not silent"
    assert 0 < speech.end.timings["ttfa_ms"] < speech.end.timings["total_ms"]


async def test_incremental_text_starts_audio_before_the_last_piece(speech_server):
    async with AsyncClient(speech_server.ws_url) as client:
        await client.speak("Sure, let me look", id="inc", final=False)
        first = await asyncio.wait_for(client.receive(), 30)  # arrives with the text still open
        assert (first.type, first.id, first.seq) == ("audio", "inc", 0)
        await client.speak(" that up for you.", id="inc", final=True)
        rest = await outcomes_until(client, lambda o: o.type != "audio")
    assert isinstance(rest[-1], SpeechEnd) and rest[-1].chunks == len(rest)  # the first chunk + the rest


async def test_barge_in_and_cancel_stop_the_utterance_at_once(speech_server):
    async with AsyncClient(speech_server.ws_url) as client:
        await client.speak(SENTENCE * 2, id="long")
        assert (await asyncio.wait_for(client.receive(), 30)).id == "long"
        await client.speak("New question.", id="new")  # a new utterance interrupts the old one
        got = await outcomes_until(client, lambda o: isinstance(o, SpeechEnd))
        cancelled = next(i for i, o in enumerate(got) if isinstance(o, Cancelled))
        assert (got[cancelled].id, got[cancelled].by) == ("long", "new")
        assert all(o.id == "new" for o in got[cancelled + 1:]), "no stale audio after the cancel"

        await client.speak(SENTENCE, id="stop me")
        assert (await asyncio.wait_for(client.receive(), 30)).id == "stop me"
        await client.send_raw('{"type": "cancel", "id": "stop me"}')
        got = await outcomes_until(client, lambda o: isinstance(o, Cancelled))
        assert got[-1].by is None
        with pytest.raises(TimeoutError):  # nothing of it follows the acknowledgement
            await asyncio.wait_for(client.receive(), 2.5)


BAD_SPEECH = {
    "empty_text": ({"text": "   "}, "empty_text"),
    "text_too_long": ({"text": "word " * 80}, "text_too_long"),
    "unknown_voice": ({"text": "hello", "voice": "nobody"}, "unknown_voice"),
    "unsupported_characters": ({"text": "hello \u4f60\u597d"}, "unsupported_characters"),
    "speed_out_of_range": ({"text": "hello", "speed": 5}, "invalid"),
}


@pytest.mark.parametrize("kind", list(BAD_SPEECH))
async def test_bad_speech_gets_a_typed_error_and_the_session_stays_usable(speech_server, kind):
    fields, code = BAD_SPEECH[kind]
    async with AsyncClient(speech_server.ws_url) as client:
        await client.send_raw(json.dumps({"type": "speak", "id": "bad", **fields}))
        error = await asyncio.wait_for(client.receive(), 10)
        assert (error.type, error.code, error.id) == ("error", code, "bad"), error
        assert (await client.say("Still here.")).end is not None


async def test_cancel_for_an_unknown_utterance_is_a_typed_error(speech_server):
    async with AsyncClient(speech_server.ws_url) as client:
        await client.send_raw('{"type": "cancel", "id": "never"}')
        error = await asyncio.wait_for(client.receive(), 10)
    assert isinstance(error, Error) and (error.code, error.id) == ("unknown_utterance", "never")


async def test_speech_and_images_share_one_session(speech_server):
    async with AsyncClient(speech_server.ws_url) as client:
        await client.speak("A picture while I talk.", id="talk")
        frame = await client.generate("a red fox")
        rest = await outcomes_until(client, lambda o: isinstance(o, SpeechEnd))
    assert frame.type == "frame" and rest[-1].id == "talk"


async def test_one_speak_of_brackets_does_not_silence_speech_for_anyone(speech_server):
    """The message that once killed the speech runner's loop: every later speak got nothing."""
    async with AsyncClient(speech_server.ws_url) as hostile, AsyncClient(speech_server.ws_url) as other:
        await hostile.send_raw(json.dumps({"type": "speak", "id": "a", "text": "Alright, ))))))))))) ", "final": False}))
        await hostile.send_raw(json.dumps({"type": "speak", "id": "a", "text": "", "final": True}))
        got = await outcomes_until(hostile, lambda o: o.type != "audio")
        assert (got[-1].type, got[-1].id) == ("speech_end", "a") and got[-1].samples > 0
        assert (await other.say("Still speaking.")).end is not None
    assert httpx.get(speech_server.url + "/readyz").status_code == 200


async def test_a_speech_model_that_raises_mid_utterance_fails_only_that_utterance(speech_server, monkeypatch):
    runner = speech_server.engine.speech
    decode, calls = runner.model.decode, 0

    def raises_on_second_piece(phrase, end):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("onnxruntime: failed to allocate memory")
        return decode(phrase, end)

    monkeypatch.setattr(runner.model, "decode", raises_on_second_piece)
    async with AsyncClient(speech_server.ws_url) as client:
        await client.speak(SENTENCE, id="broken")
        got = await outcomes_until(client, lambda o: o.type != "audio")
        assert got[0].type == "audio" and (got[-1].type, got[-1].id, got[-1].code) == ("error", "broken", "internal")
        assert "incident" in got[-1].message
        assert (await client.say("Back again.")).end is not None
    assert httpx.get(speech_server.url + "/readyz").status_code == 200


HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", " ", "...", ")))", "(((", "12345678901234567890", "3.14", "$%&*", "\x00", "\u202e",
                     "\U0001f600", "\u4f60\u597d", "\u0645\u0631\u062d\u0628\u0627", "\ud800", "Hel", "lo.",
                     "x" * 400, "Okay,", " and then", "!", "\n\n"]),
    st.text(max_size=30),
)
SPEAK_STEPS = st.lists(st.tuples(HOSTILE_TEXT, st.booleans(), st.booleans()), min_size=1, max_size=4)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=SPEAK_STEPS)
def test_any_speak_and_cancel_sequence_gets_audio_or_a_typed_error_and_speech_goes_on(speech_server, steps):
    """Pieces two by two share an utterance id; some are cancelled. Every answer is audio, an end, a
    cancel or a typed error (never `internal`), and a plain sentence is still spoken afterwards."""
    with connect(speech_server.ws_url + "/v1/stream?codec=json", max_size=None) as ws:
        ws.recv(10)  # hello
        for n, (text, final, cancel) in enumerate(steps):
            ws.send(json.dumps({"type": "speak", "id": f"u{n // 2}", "text": text, "final": final}))
            if cancel:
                ws.send(json.dumps({"type": "cancel", "id": f"u{n // 2}"}))
        ws.send(json.dumps({"type": "speak", "id": "plain", "text": "Still here.", "final": True}))
        answers = []
        while (answer := json.loads(ws.recv(60)))["id"] != "plain" or answer["type"] == "audio":
            answers.append(answer)
    assert answer["type"] == "speech_end"
    assert all(a["type"] in ("audio", "speech_end", "cancelled", "error") for a in answers)
    assert "internal" not in [a.get("code") for a in answers]
    assert httpx.get(speech_server.url + "/readyz").status_code == 200


def recorded(spans: list, kind: str, compute):
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return compute(*args, **kwargs)
        finally:
            spans.append((started, time.perf_counter(), kind))

    return run


async def test_image_and_speech_runners_take_turns_on_the_cpu(speech_server, monkeypatch):
    """Frames keep coming while a reply is spoken, and the two runners never compute at once."""
    engine = speech_server.engine
    images = next(iter(engine.runners.values()))
    assert engine.speech.cpu_turn is not None and engine.speech.cpu_turn is images.cpu_turn
    spans: list[tuple[float, float, str]] = []
    monkeypatch.setattr(images, "_compute", recorded(spans, "image", images._compute))
    monkeypatch.setattr(engine.speech, "_decode_next", recorded(spans, "speech", engine.speech._decode_next))

    async with AsyncClient(speech_server.ws_url) as talker, AsyncClient(speech_server.ws_url) as painter:
        speaking = asyncio.create_task(talker.say(SENTENCE))
        frames = 0
        while not speaking.done():
            await painter.generate("a red fox", seed=frames)
            frames += 1
        speech = await speaking
    assert speech.end.samples > 0 and frames >= 3
    speech_spans = [s for s in spans if s[2] == "speech"]
    image_spans = [s for s in spans if s[2] == "image"]
    assert len(speech_spans) >= 2 and image_spans
    overlaps = [(a, b) for a in speech_spans for b in image_spans if a[0] < b[1] and b[0] < a[1]]
    assert not overlaps


def test_sync_client_and_cli_write_wav_files(speech_server, tmp_path, signing_keys):
    with Client(speech_server.url) as client:
        speech = client.say("One, two, three.")
        with pytest.raises(GenerationError, match="unknown_voice"):
            client.say("hi", voice="nobody")
    speech.save(tmp_path / "sync.wav")
    result = CliRunner().invoke(app, ["say", "One, two, three.", "-o", str(tmp_path / "cli.wav"),
                                      "--url", speech_server.url])
    assert result.exit_code == 0, result.output
    for name in ("sync.wav", "cli.wav"):
        with wave.open(str(tmp_path / name)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
            assert wav.getnframes() > 0.5 * 24000
    assert not read_manifest((tmp_path / "sync.wav").read_bytes(), "audio/wav").present  # saved as streamed
    assert read_manifest((tmp_path / "cli.wav").read_bytes(), "audio/wav", signing_keys / "root.pem").trusted


def test_say_in_process_writes_a_signed_wav(tmp_path, signing_keys):
    result = CliRunner().invoke(app, ["say", "One, two, three.", "-o", str(tmp_path / "here.wav")])
    assert result.exit_code == 0, result.output
    report = read_manifest((tmp_path / "here.wav").read_bytes(), "audio/wav", signing_keys / "root.pem")
    assert report.valid and report.trusted and report.generation["seconds"] > 0.5
    verified = CliRunner().invoke(app, ["verify", str(tmp_path / "here.wav"), "--root", str(signing_keys / "root.pem")])
    assert verified.exit_code == 0, verified.output
    assert "valid, trusted" in verified.output and "watermark (livegen-audio): server tag 0x" in verified.output


async def test_an_utterance_exports_as_a_wav_with_content_credentials(speech_server, signing_keys):
    async with AsyncClient(speech_server.ws_url) as client:
        speech = await client.say("One, two, three.")
        exported = await client.export(speech.id)
        with pytest.raises(GenerationError, match="unknown_frame"):
            await client.export("never-said")
    assert exported.format == "wav"
    with wave.open(io.BytesIO(exported.image)) as wav:
        assert wav.getframerate() == speech.sample_rate
        assert wav.readframes(wav.getnframes()) == speech.pcm  # the audio as it was streamed, signed
    report = read_manifest(exported.image, "audio/wav", signing_keys / "root.pem")
    assert report.valid and report.trusted
    assert report.actions[0]["action"] == "c2pa.created"
    assert report.actions[0]["digitalSourceType"].endswith("trainedAlgorithmicMedia")
    assert report.generation["seconds"] == pytest.approx(len(speech.pcm) / 2 / speech.sample_rate, abs=0.001)
    tampered = bytearray(exported.image)
    tampered[exported.image.index(b"data") + 1000] ^= 0x01  # one bit of one audio sample
    assert not read_manifest(bytes(tampered), "audio/wav", signing_keys / "root.pem").valid


def test_a_speech_model_named_but_missing_keeps_the_server_not_ready(tiny_sd, tmp_path):
    missing = tmp_path / "kokoro.onnx"
    live = BackgroundServer(server_settings(tiny_sd, speech=SpeechConfig(model=str(missing))), wait_ready=False)
    try:
        assert poll(lambda client: client.get(live.url + "/readyz").json()["error"] is not None, 60)
        ready = httpx.get(live.url + "/readyz")
        assert ready.status_code == 503 and str(missing) in ready.json()["error"]
    finally:
        live.stop()


def test_phrases_are_sentences_and_pieces_fit_the_audio_ahead(speech_server):
    """A phrase is a whole sentence, or the first clause of one still arriving (the sentence when
    only a scrap would be left). The first piece of audio is the first word or two; later pieces
    are as long as can be decoded while the audio already sent plays, and never tiny: inside a
    word, if no word ends soon enough."""
    runner = speech_server.engine.speech
    rate = runner.model.sample_rate

    def utterance(ahead_s: float | None, text: str = "Sure, I can help with that. It takes a minute.",
                  final: bool = True) -> Utterance:
        spoken = Utterance(id="u", owner=Session(), runner=runner, voice=runner.default_voice, language="en-us",
                           speed=1.0, received_at=time.perf_counter(), text=text, final=final)
        if ahead_s is not None:
            spoken.first_audio_at, spoken.samples = time.perf_counter(), int(ahead_s * rate)
        return spoken

    assert runner._next_phrase(utterance(None), "Sure, I can help with that. It takes a minute.", True) == (
        "Sure, I can help with that.", "It takes a minute.")
    assert runner._next_phrase(utterance(None), "Sure, I can help with", False) == ("Sure", "I can help with")
    assert runner._next_phrase(utterance(None), "Okay, done", False) == (None, "Okay, done")  # a scrap: wait

    phonemes = runner.model.phonemize("Your table for two is ready at seven.")

    def piece_end(ahead_s: float | None, decoded: int = 0) -> tuple[Phrase, int]:
        phrase = runner.model.prepare(phonemes, runner.default_voice)
        phrase.decoded = decoded
        return phrase, runner._piece_end(utterance(ahead_s), phrase)

    phrase, first = piece_end(None)
    least = round(MIN_PIECE_S / phrase.frame_s)
    assert first == next(end for end in phrase.word_ends
                         if end >= phrase.lead + FIRST_PIECE_S / phrase.frame_s) < phrase.frames
    # No audio ahead (on a fast machine 0.05 s can hold more): the fewest frames worth a piece, at a word end if one fits.
    phrase, little = piece_end(0.0, decoded=first)
    words = [end for end in phrase.word_ends if first < end <= first + least]
    assert little == (words[-1] if words else first + least)
    phrase, plenty = piece_end(60.0, decoded=first)
    assert plenty == phrase.frames


def test_a_reply_not_yet_heard_is_decoded_before_the_next_pieces_of_replies_playing():
    """Its listener waits in silence, theirs have audio in hand: with many voices at once, a new
    reply's first piece goes ahead of the queued pieces of replies already playing, but not ahead of
    other replies still waiting for their first."""
    runner = SpeechRunner(SpeechConfig(), Settings(models=[]), EngineMetrics(), Workers(1))

    def reply(id: str, heard: bool) -> Utterance:
        spoken = Utterance(id=id, owner=Session(), runner=runner, voice="af", language="en-us", speed=1.0,
                           received_at=time.perf_counter(), text="Hello there.", final=True)
        spoken.first_audio_at = time.perf_counter() if heard else None
        return spoken

    for id, heard in (("playing 1", True), ("new 1", False), ("playing 2", True), ("new 2", False),
                      ("playing 3", True)):
        runner._schedule(reply(id, heard))
    assert [spoken.id for spoken in runner._queue] == ["new 1", "new 2", "playing 1", "playing 2", "playing 3"]


# --- the audio watermark (livegen/safety/audio_watermark.py; tests/test_audio_watermark.py for the scheme)

LONG_REPLY = ("Your table for two is booked for seven thirty tonight. You will get a confirmation by text "
              "about an hour before, and you can reply to change the time.")


@pytest.fixture(scope="module")
def saved_reply(speech_server, tmp_path_factory):
    """A reply streamed by the server, saved as it arrived (16-bit WAV, unsigned)."""
    path = tmp_path_factory.mktemp("reply") / "reply.wav"
    with Client(speech_server.url) as client:
        client.say(LONG_REPLY).save(path)
    return path


async def test_each_streamed_reply_carries_the_server_tag_and_the_next_utterance_number(speech_server):
    tag = server_tag(speech_server.engine.settings.safety.server_id)
    async with AsyncClient(speech_server.ws_url) as first, AsyncClient(speech_server.ws_url) as second:
        replies = [await first.say("One, two, three, four, five, six."),
                   await second.say("Seven, eight, nine, ten, eleven."),
                   await first.say("Twelve, thirteen, fourteen, fifteen.")]
    payloads = [audio_watermark.read(samples(reply.chunks) / 32768, reply.sample_rate).payload for reply in replies]
    assert all(payload is not None and payload.server == tag for payload in payloads), payloads
    assert [p.counter - payloads[0].counter for p in payloads] == [0, 1, 2]  # one number per utterance, server-wide
    assert all(reply.end.timings["watermark_ms"] > 0 for reply in replies)  # its cost, reported per utterance
    assert httpx.get(speech_server.url + "/readyz").json()["safety"]["audio_watermark"] is True


@pytest.mark.parametrize("attack", audio_watermark.ATTACKS)
def test_a_saved_reply_reads_after_resampling_lossy_codecs_and_cuts_at_random_points(speech_server, saved_reply,
                                                                                       attack):
    audio, rate = soundfile.read(saved_reply, dtype="float32")
    payload = audio_watermark.read(audio, rate).payload
    assert payload is not None and payload.server == server_tag(speech_server.engine.settings.safety.server_id)
    changed, changed_rate = audio_watermark.attack(audio, rate, attack)
    assert audio_watermark.read(changed, changed_rate).payload == payload
    length = int(2.5 * changed_rate)  # a few seconds cut anywhere: across chunks, phrases and the mark's period
    for start in np.random.default_rng(len(attack)).integers(0, len(changed) - length, 4):
        assert audio_watermark.read(changed[start:start + length], changed_rate).payload == payload, start


def test_livegen_verify_reads_a_marked_reply_and_says_when_none_is_found(speech_server, saved_reply, tmp_path,
                                                                          monkeypatch):
    payload = audio_watermark.read(*soundfile.read(saved_reply)).payload
    marked = CliRunner().invoke(app, ["verify", str(saved_reply)])
    assert marked.exit_code == 0, marked.output
    assert f"watermark (livegen-audio): server tag {payload.server:#06x}, utterance {payload.counter}" in marked.output

    monkeypatch.setattr(speech_server.engine.speech, "watermarker", None)  # what --no-audio-watermark leaves
    with Client(speech_server.url) as client:
        plain = client.say(LONG_REPLY)
    assert "watermark_ms" in plain.end.timings and plain.end.timings["watermark_ms"] == 0
    plain.save(tmp_path / "plain.wav")
    unmarked = CliRunner().invoke(app, ["verify", str(tmp_path / "plain.wav")])
    assert unmarked.exit_code == 0, unmarked.output
    assert "watermark (livegen-audio): none found" in unmarked.output
    audio = samples(plain.chunks) / 32768
    length = 2 * plain.sample_rate
    cuts = np.stack([audio[start:start + length]
                     for start in np.random.default_rng(0).integers(0, len(audio) - length, 50)])
    assert not any(reading.present for reading in audio_watermark.read_batch(cuts, plain.sample_rate))
