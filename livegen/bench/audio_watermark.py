"""Audio for measuring the speech watermark (livegen/safety/audio_watermark.py): speech-like
synthetic audio and noise, made in batches, for the false-positive count of the tests."""

from __future__ import annotations

import numpy as np

# --- synthetic audio ------------------------------------------------------------------------------


def speech_like(count: int, samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """(count, samples) float32 audio shaped like speech: a glottal pulse train with a wandering pitch
    (90-240 Hz) mixed with breath noise, through three random formants and a spectral tilt, gated
    into syllables and pauses at 2-5 per second, each row at its own level."""
    t = np.arange(samples) / rate
    pitch = rng.uniform(90, 240, (count, 1)) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5, (count, 1)) * t))
    pulses = np.cos(2 * np.pi * np.cumsum(pitch / rate, axis=1)).clip(0, None) ** 8
    voicing = np.sin(2 * np.pi * rng.uniform(1, 3, (count, 1)) * t + rng.uniform(0, 6, (count, 1))) > -0.3
    source = np.where(voicing, pulses - pulses.mean(axis=1, keepdims=True), 0.3 * rng.standard_normal((count, samples)))
    frequencies = np.fft.rfftfreq(samples, 1 / rate)
    shape = np.zeros((count, len(frequencies)))
    for low, high in ((300, 900), (900, 2500), (2300, 3500)):  # formants: centre and bandwidth per row
        centre, width = rng.uniform(low, high, (count, 1)), rng.uniform(60, 200, (count, 1))
        shape += 1 / (1 + ((frequencies - centre) / width) ** 2)
    shape *= 1 / np.sqrt(1 + frequencies / 500)  # the voice's fall-off towards high frequencies
    audio = np.fft.irfft(np.fft.rfft(source, axis=1) * shape, samples, axis=1)
    syllables = np.sin(2 * np.pi * rng.uniform(2, 5, (count, 1)) * t + rng.uniform(0, 6, (count, 1))).clip(0, None)
    audio *= syllables**0.7
    level = rng.uniform(0.03, 0.15, (count, 1)) / np.maximum(np.sqrt(np.mean(audio**2, axis=1, keepdims=True)), 1e-9)
    return (audio * level).astype(np.float32)


def noise(count: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(count, samples) float32: white noise in even rows, pink (1/f) in odd ones, at varied levels."""
    white = rng.standard_normal((count, samples))
    spectrum = np.fft.rfft(white[1::2], axis=1)
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.shape[1]), 1))
    white[1::2] = np.fft.irfft(spectrum, samples, axis=1)
    white /= white.std(axis=1, keepdims=True)
    return (white * rng.uniform(0.005, 0.2, (count, 1))).astype(np.float32)
