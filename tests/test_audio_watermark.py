"""The speech watermark: the payload survives resampling, lossy codecs and cuts anywhere; marking
chunk by chunk is marking the whole reply; unmarked audio is not read as marked. (A real server's
replies carry it: tests/test_speech.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from livegen.bench.audio_watermark import CUTS_S, noise, speech_like
from livegen.cli import app
from livegen.safety import audio_watermark as aw
from livegen.safety.watermark import Payload, server_tag

RATE = 24000


@pytest.fixture(scope="module")
def reply() -> tuple[np.ndarray, aw.UtteranceMark, np.ndarray]:
    """Six seconds of speech-like audio, and the same marked as the runner marks it (100 ms chunks)."""
    host = speech_like(1, 6 * RATE, RATE, np.random.default_rng(7))[0]
    mark = aw.AudioWatermarker("test-server", RATE).utterance(41)
    marked = np.concatenate([mark.mark(host[i:i + 2400]) for i in range(0, len(host), 2400)])
    return host, mark, marked


def test_marking_chunk_by_chunk_is_marking_the_whole_reply(reply):
    host, mark, chunked = reply
    whole = aw.AudioWatermarker("test-server", RATE).utterance(41).mark(host)
    np.testing.assert_array_equal(chunked, whole)  # the offset and the envelope carry across chunks


@given(cuts=st.lists(st.integers(1, 6 * RATE - 1), max_size=12, unique=True))
@settings(max_examples=25, deadline=None)
def test_chunks_of_any_size_give_the_same_samples(reply, cuts):
    host, _, chunked = reply
    mark = aw.AudioWatermarker("test-server", RATE).utterance(41)
    pieces = np.split(host, sorted(cuts))
    np.testing.assert_array_equal(np.concatenate([mark.mark(piece) for piece in pieces]), chunked)


@given(power=arrays(np.float64, st.integers(1, 3 * aw.FOLLOW_BLOCK), elements=st.floats(0, 1e6)),
       rate=st.sampled_from([aw.MIN_RATE, 16000, 22050, 24000, 48000]), cuts=st.lists(st.integers(1, 3 * aw.FOLLOW_BLOCK)))
@settings(max_examples=50, deadline=None)
def test_the_envelope_follower_is_lfilters_recursion(power, rate, cuts):
    from scipy.signal import lfilter

    a = np.exp(-1000.0 / (aw.ENVELOPE_MS * rate))
    whole = aw.Follower(a)(power)
    np.testing.assert_allclose(whole, lfilter([1 - a], [1, -a], power), rtol=1e-12, atol=1e-300)
    follower = aw.Follower(a)
    pieces = np.split(power, sorted(c for c in set(cuts) if c < len(power)))
    np.testing.assert_array_equal(np.concatenate([follower(piece) for piece in pieces]), whole)


def test_the_payload_is_the_server_tag_and_the_utterance_counter(reply):
    _, mark, marked = reply
    reading = aw.read(marked, RATE)
    assert reading.present and reading.detected
    assert reading.payload == mark.payload == Payload(server_tag("test-server"), 41)
    assert aw.AudioWatermarker("test-server", RATE).utterance(2**16 + 5).payload.counter == 5  # wraps


@pytest.mark.parametrize("attack", aw.ATTACKS)
def test_the_payload_survives_each_transform_and_cuts_at_random_points(reply, attack):
    _, mark, marked = reply
    audio, rate = aw.attack(marked, RATE, attack)
    assert aw.read(audio, rate).payload == mark.payload
    rng = np.random.default_rng(abs(hash(attack)) % 2**32)
    length = int(2.5 * rate)
    for start in rng.integers(0, len(audio) - length, 5):
        assert aw.read(audio[start:start + length], rate).payload == mark.payload, (attack, start / rate)


@pytest.mark.parametrize("attack", aw.ATTACKS)
def test_a_reply_of_one_second_reads(attack):
    """Shorter than the mark's period: the reader's CRC settles the few bits left in doubt."""
    hosts = speech_like(4, RATE, RATE, np.random.default_rng(11))
    for counter, host in enumerate(hosts):
        mark = aw.AudioWatermarker("test-server", RATE).utterance(counter)
        assert aw.read(*aw.attack(mark.mark(host), RATE, attack)).payload == mark.payload, counter


def test_lossy_transforms_are_64_kbits(reply):
    """The attacks are what they say: MP3 and Opus files of about 64 kbit/s."""
    import io

    import soundfile

    _, _, marked = reply
    for name, fmt, subtype, extra in (("mp3", "MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT",
                                                                       "compression_level": aw.MP3_64K}),
                                      ("opus", "OGG", "OPUS", {"compression_level": aw.OPUS_64K})):
        buffer = io.BytesIO()
        soundfile.write(buffer, marked, RATE, format=fmt, subtype=subtype, **extra)
        kbits = len(buffer.getvalue()) * 8 / (len(marked) / RATE) / 1000
        assert 56 < kbits < 72, (name, kbits)


def test_the_mark_is_quiet_beside_the_speech(reply):
    host, _, marked = reply
    assert aw.segmental_snr(host, marked, RATE) > 25


def test_the_mark_falls_silent_with_the_speech():
    """Before the first word it is nothing; in a pause it fades with the speech's envelope and is
    under half a 16-bit step within 200 ms, so a pause stays digital silence on the wire."""
    host = speech_like(1, 3 * RATE, RATE, np.random.default_rng(3))[0]
    host[: RATE // 2] = host[RATE:2 * RATE] = 0
    marked = aw.AudioWatermarker("test-server", RATE).utterance(0).mark(host)
    assert np.all(marked[: RATE // 2] == 0)
    pause = marked[RATE + RATE // 5:2 * RATE]
    assert np.all(np.round(pause * 32767) == 0) and np.any(marked[RATE:RATE + RATE // 50] != 0)


def test_a_louder_or_inverted_copy_still_reads(reply):
    _, mark, marked = reply
    assert aw.read(-0.3 * marked, RATE).payload == mark.payload
    assert aw.read(np.stack([marked, marked], axis=1), RATE).payload == mark.payload  # stereo, as soundfile reads it


def test_unmarked_audio_is_not_read_as_marked_in_a_thousand_segments():
    """False positives: 600 speech-like and 400 noise segments of one period (1.2 s at 16 kHz),
    read in batches. None may pass the pilot's threshold; the highest score is far below it."""
    rng = np.random.default_rng(2024)
    samples = aw.PERIOD
    scores = []
    for batch in range(10):
        segments = speech_like(100, samples, aw.READ_RATE, rng) if batch < 6 else noise(100, samples, rng)
        readings = aw.read_batch(segments, aw.READ_RATE)
        assert not any(r.present or r.detected for r in readings)
        scores += [r.score for r in readings]
    assert len(scores) == 1000
    assert max(scores) < aw.DETECT_SCORE - 1.5, max(scores)


def test_unmarked_speech_like_audio_at_the_model_rate_reads_as_unmarked(reply):
    host, _, _ = reply
    reading = aw.read(host, RATE)
    assert not reading.present and reading.payload is None and reading.score < aw.DETECT_SCORE


@given(audio=arrays(np.float32, st.integers(0, 30000), elements=st.floats(-1, 1, width=32)),
       rate=st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]))
@settings(max_examples=40, deadline=None)
def test_any_audio_reads_without_error(audio, rate):
    reading = aw.read(audio, rate)
    assert reading.payload is None or reading.present
    assert len(reading.bits) == 48 and reading.seconds == pytest.approx(len(audio) / rate)


def test_non_finite_samples_read_as_silence_and_full_scale():
    audio = np.zeros(RATE * 2, dtype=np.float32)
    audio[::7], audio[1::7], audio[2::7] = np.nan, np.inf, -np.inf
    assert not aw.read(audio, RATE).present


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_other_model_rates_mark_and_read(rate):
    host = speech_like(1, 4 * rate, rate, np.random.default_rng(rate))[0]
    mark = aw.AudioWatermarker("another", rate).utterance(3)
    assert aw.read(mark.mark(host), rate).payload == mark.payload


@pytest.mark.parametrize("rate", [8000, 11025, 16001])
def test_a_rate_the_mark_does_not_fit_is_refused_at_load(rate):
    with pytest.raises(ValueError, match=f"{rate} Hz"):
        aw.AudioWatermarker("server", rate)


def test_the_bench_measures_cost_loudness_robustness_and_false_positives(tmp_path):
    result = CliRunner().invoke(app, ["bench", "audio-watermark", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "audio-watermark.json").read_text())
    stream, share = r["stream"], r["stream"]["share_of_synthesis"]
    assert stream["replies"] == stream["watermark_ms_per_reply"]["n"] == 4  # two long replies, two short
    # over all replies the share is a weighted mean of each reply's, so it cannot pass the worst one
    assert 0 < share["watermark_alone"] < share["all_replies"] <= share["worst_reply"]
    assert r["chunk_ms"]["n"] > 4 * 5 and r["utterance_setup_ms"]["n"] == 4
    for rows in r["robustness"].values():
        assert rows["whole"]["reads"] == 2 and all(rows[str(cut)]["reads"] == 2 * r["cuts_per_reply"] for cut in CUTS_S)
        assert all(0 <= row["payload_rate"] <= 1 and row["wrong_payloads"] == 0 for row in rows.values())
    assert set(r["robustness"]) == set(r["short_replies"]) == set(aw.ATTACKS)
    assert all(kind["segments"] == 100 and kind["present"] == 0 for kind in r["false_positives"].values())
    assert r["segmental_snr_db"]["min"] > 20 and r["perth"] is None
