"""Text -> phonemes for Kokoro, offline: espeak-ng (Debian) through `phonemizer`'s espeak backend.

Why phonemizer: it is the maintained binding (bootphon, 3.4 in 2026) that loads Debian's
libespeak-ng in-process (~0.3 ms a sentence, no subprocess per phrase) and keeps punctuation,
which Kokoro uses for prosody. Since 3.4 its only dependencies are small pure-Python ones.

Why a mapping: Kokoro v1.0 learned English from misaki's phoneme inventory, which writes the
diphthongs and affricates as single symbols (eɪ -> A, aɪ -> I, oʊ -> O, dʒ -> ʤ, ...) and American
English without length marks. espeak writes textbook IPA; `_ENGLISH` rewrites it into that
inventory (see misaki's EN_PHONES.md for what each symbol means). Other espeak languages pass
through with only their tie bars removed.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from functools import lru_cache

from livegen.models.base import ModelError

log = logging.getLogger(__name__)
TIE = "^"  # espeak joins multi-symbol phonemes with this (phonemizer's `tie` option)
_SYLLABIC = "\u0329"  # combining vertical line below: a syllabic consonant, "button" -> bʌʔn̩

# Applied in order. Multi-symbol phonemes (still tied with ^) first, then single symbols.
_ENGLISH = [
    ("a^ɪ", "I"), ("a^ʊ", "W"), ("e^ɪ", "A"), ("ɔ^ɪ", "Y"), ("d^ʒ", "ʤ"), ("t^ʃ", "ʧ"),
    ("ə^l", "ᵊl"), ("ʔˌn" + _SYLLABIC, "tᵊn"), ("ʔn" + _SYLLABIC, "tᵊn"), ("ʔn", "tᵊn"),
    ("ɚ", "əɹ"), ("r", "ɹ"), ("x", "k"), ("ç", "k"), ("ɐ", "ə"), ("ɬ", "l"), ("ʔ", "t"),
    ("ʲ", ""), ("\u0303", ""),
]
_AMERICAN = [("o^ʊ", "O"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɪə", "iə"), ("ː", "")]
_BRITISH = [("ə^ʊ", "Q"), ("e^ə", "ɛː"), ("i^ə", "ɪə"), ("iə", "ɪə")]

_ALLOWED_CONTROLS = {"\n", "\r", "\t"}
# Latin Extended-D/E and the scripts beside them: espeak-ng 1.51 switches language on every one of
# them that English accepts (all 14,000 such characters tried one by one; espeak-ng#950)
_SWITCHES_LANGUAGE = range(0xA700, 0xAC00)
_espeak_lock = threading.Lock()  # libespeak-ng keeps global state: one call at a time
_PROBE = "hello seven"  # read after every call, to see that espeak still reads as it did when loaded
_backends: dict[str, tuple[object, str]] = {}  # language -> (espeak, how it read _PROBE when loaded)


def unsupported_characters(text: str, language: str = "en-us") -> list[str]:
    """Characters espeak would misread, in order of first appearance.

    Control and private-use characters are never accepted, nor U+A700-U+ABFF: on any of them
    espeak-ng switches to another language's rules for the rest of the text ("hello" comes out
    "hˈʌlʌ"). For English, letters must be Latin script: espeak reads other scripts as "Chinese
    letter" and the like, which is worse than an error. Digits, punctuation and symbols (currency,
    emoji) are read out by espeak.
    """
    bad: list[str] = []
    english = language.startswith("en")
    for char in text:
        category = unicodedata.category(char)
        rejected = (
            (category[0] == "C" and char not in _ALLOWED_CONTROLS)
            or ord(char) in _SWITCHES_LANGUAGE
            or (english and category[0] == "L" and "LATIN" not in unicodedata.name(char, ""))
        )
        if rejected and char not in bad:
            bad.append(char)
    return bad


def _backend(language: str):
    """(under _espeak_lock) The language's espeak and how it read _PROBE when loaded. Each one is
    its own copy of libespeak-ng (phonemizer loads one per backend), so a fresh one has fresh state."""
    if language not in _backends:
        try:
            from phonemizer.backend import EspeakBackend
        except ImportError as exc:
            raise ModelError("English phonemes need phonemizer: pip install phonemizer") from exc
        try:
            backend = EspeakBackend(language, preserve_punctuation=True, with_stress=True, tie=TIE,
                                    language_switch="remove-flags")
        except RuntimeError as exc:  # no libespeak-ng, or a language it does not know
            raise ModelError(f"espeak-ng cannot phonemize {language!r} ({exc}); on Debian: "
                             "apt-get install espeak-ng") from exc
        _backends[language] = backend, _read(backend, _PROBE)
    return _backends[language]


def _read(backend, text: str) -> str:
    # espeak may answer one input line with several clauses: join them
    return " ".join(part.strip() for part in backend.phonemize([text], strip=True)).strip()


def espeak_ipa(text: str, language: str = "en-us") -> str:
    """espeak-ng's IPA for text, stress marks and punctuation kept, ties written as ^."""
    with _espeak_lock:
        backend, probe = _backend(language)
        ipa = _read(backend, text)
        # Some characters switch espeak to another language's rules and leave it there (espeak-ng#950):
        # every later call, from any session, would be garbled. Setting its voice before each read
        # undid it but crashed espeak (4 runs of ~500 hostile texts, 4 segfaults); a fresh copy loads
        # in 26 ms and is clean, though the old one stays mapped (~5 MB). The characters known to do
        # this are refused up front (unsupported_characters): this is for the ones not yet known.
        if _read(backend, _PROBE) != probe:
            log.warning("espeak-ng changed how it reads after %r; loading it again", text[:40])
            del _backends[language]
        return ipa


def to_kokoro(ipa: str, language: str = "en-us") -> str:
    """Rewrite espeak's IPA into the inventory Kokoro was trained on (see the module docstring)."""
    rules = []
    if language.startswith("en"):
        rules = _ENGLISH + (_BRITISH if language == "en-gb" else _AMERICAN)
    for old, new in rules:
        ipa = ipa.replace(old, new)
    ipa = re.sub(rf"(\S){_SYLLABIC}", r"ᵊ\1", ipa).replace(_SYLLABIC, "")
    if language.startswith("en"):
        ipa = ipa.replace("o", "ɔ")  # espeak < 1.52 (Debian 12) leaves a bare o in "forty"
    return ipa.replace(TIE, "")


@lru_cache(maxsize=1024)  # the speech runner splits an utterance again as each piece of it arrives
def phonemize(text: str, language: str = "en-us") -> str:
    """Text -> Kokoro phonemes. Symbols the model's vocabulary lacks are the caller's to filter."""
    return to_kokoro(espeak_ipa(text, language), language)
