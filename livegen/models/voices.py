"""Every voice the server speaks with, across model families, and which one says a text.

Text with Japanese kana is Japanese, anything else is the configured language (English): an
utterance without a voice named takes the default voice of its language, the English voice for
English (Piper's en_US joe unless configured; `livegen bench voices` says why) and the first voice
of a model that speaks Japanese (Kokoro's jf_alpha) for Japanese. A voice named speaks in any
language its model knows, so Kokoro's Japanese voices still read English (with an accent).

`Voices` offers the calls of one `VoiceModel`, each routed to the model that holds the voice:
the runner never asks which family it is talking to.
"""

from __future__ import annotations

import re

import numpy as np

from livegen.models.base import ModelError
from livegen.models.voice import JAPANESE, SAMPLE_RATE, Phrase, SpeechError, VoiceModel

# Hiragana, katakana and their halfwidth forms: kanji alone may be Chinese, which no voice here reads.
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9d]")


class Voices:
    """The loaded models' voices; a name held by two models belongs to the first."""

    sample_rate = SAMPLE_RATE

    def __init__(self, models: list[VoiceModel], default_voice: str | None = None, language: str = "en-us"):
        if not models:
            raise ModelError("no speech model to speak with")
        self.models = models
        self._holder: dict[str, VoiceModel] = {}
        for model in models:
            for voice in model.list_voices():
                self._holder.setdefault(voice, model)
        self.language = language
        self.default_voice = default_voice or models[0].list_voices()[0]
        if self.default_voice not in self._holder:
            raise ModelError(f"default voice {self.default_voice!r} is not among {self.list_voices()}")
        self._defaults = {language: self.default_voice}
        japanese = next((m for m in models if m.speaks(JAPANESE)), None)
        if japanese is not None:
            self._defaults[JAPANESE] = japanese.list_voices()[0]
        self.name = ", ".join(model.name for model in models)
        self.device = models[0].device

    def list_voices(self) -> list[str]:
        return sorted(self._holder)

    def model(self, voice: str | None) -> VoiceModel:
        """The model that holds `voice` (the default voice's if None)."""
        holder = self._holder.get(voice or self.default_voice)
        if holder is None:
            raise SpeechError("unknown_voice", f"unknown voice {voice!r}; voices: {', '.join(self.list_voices())}")
        return holder

    def language_of(self, text: str) -> str:
        """Japanese if the text has kana, else the configured language."""
        return JAPANESE if _KANA.search(text) else self.language

    def voice_for(self, language: str) -> str:
        """The default voice of a language; of the configured one for a language no model was chosen for."""
        return self._defaults.get(language, self.default_voice)

    def _route(self, text: str, language: str | None, voice: str | None) -> tuple[VoiceModel, str, str]:
        language = language or self.language_of(text)
        voice = voice or self.voice_for(language)
        return self.model(voice), voice, language

    def split_phrases(self, text: str, first_max_chars: int = 40, language: str | None = None,
                      voice: str | None = None) -> list[str]:
        """Phrases as `voice` (the language's default if None) cuts them; language from the text if None."""
        model, _, language = self._route(text, language, voice)
        return model.split_phrases(text, first_max_chars, language)

    def phonemize(self, text: str, language: str | None = None, voice: str | None = None) -> str:
        model, _, language = self._route(text, language, voice)
        return model.phonemize(text, language)

    def prepare(self, phonemes: str, voice: str | None = None, speed: float = 1.0) -> Phrase:
        voice = voice or self.default_voice
        return self.model(voice).prepare(phonemes, voice, speed)

    def decode(self, phrase: Phrase, end: int) -> np.ndarray:
        return self.model(phrase.voice).decode(phrase, end)

    def synthesize_phonemes(self, phonemes: str, voice: str | None = None, speed: float = 1.0) -> np.ndarray:
        phrase = self.prepare(phonemes, voice, speed)
        return self.decode(phrase, phrase.frames)

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0,
                   language: str | None = None) -> np.ndarray:
        model, voice, language = self._route(text, language, voice)
        return model.synthesize(text, voice, speed, language)

    def warm_up(self) -> None:
        """A real phrase in each language's default voice, the configured language first, then through
        every model not yet warm in the configured language (any voice may be asked for by name). A
        model's first phrase in a language another model warmed was as fast as its next: Kokoro's
        first English one after Piper's English and its own Japanese warm-ups, 600-760 ms like those after it."""
        warm = set()
        for language, voice in self._defaults.items():
            if self._holder[voice].warm_up(voice, language):
                warm.add(self._holder[voice])
        for model in self.models:
            if model not in warm:
                model.warm_up(None, self.language)
