"""Inaudible watermark on every chunk of speech: which server spoke and which utterance it was.

Spread spectrum, keyed and periodic. The payload is the frame watermark's (livegen/safety/
watermark.py: 16-bit server tag, 16-bit counter, here the server's utterance counter, CRC-16).
The mark is a noise-like signal in the 500-6000 Hz band with a period of PERIOD_S = 1.2 s,
defined at READ_RATE = 16 kHz: that band survives resampling to 16 kHz, and 1.2 s is a whole
number of samples at every common rate (8k, 16k, 22.05k, 24k, 44.1k, 48k).

One period is the sum, band-limited, of

- a pilot: a fixed pseudo-random +-1 chip sequence, PILOT_SHARE of the energy, which the
  reader finds at any offset (synchronisation after a cut anywhere, a codec's delay, a
  polarity flip);
- the payload: another chip sequence, cut into SLOTS slots of SLOT samples (6.25 ms), each
  slot multiplied by the sign of one payload bit; each quarter of the period carries every bit
  once, in its own keyed order, so a pause or a damaged stretch never takes a whole bit and a
  reply shorter than the period still holds every bit.

Chips and permutation come from SHAKE-256 and SHA-256, so every version of every library
reads the same key. The period is built once per utterance at 16 kHz and carried to the
model's rate by FFT resampling (exact for a periodic band-limited signal); each chunk adds
STRENGTH times the speech's own envelope (a causal follower, ENVELOPE_MS) times the period
at the utterance's running sample offset. Both the offset and the follower's state carry from
chunk to chunk, so marking chunk by chunk gives the same samples as marking the whole reply:
the chunking cannot cut the mark. Where the speech pauses, the mark pauses. Marking needs numpy
alone: the reader's scipy (scipy.signal took a server's start 0.8 s to import) is imported where
it reads.

The reader resamples to 16 kHz, whitens (each STFT bin divided by the smoothed magnitude
around it, in the band only, so loud vowels do not drown the chips), folds the audio onto
one period (the mark adds up, the speech does not), finds the pilot's offset by circular
correlation, and sums each bit's slots. A mark is `present` when the pilot's peak stands
DETECT_SCORE times the correlation's RMS (unmarked audio peaks at 4-6); its payload is read when,
in addition, the CRC matches, as read or with some of its FLIP_BITS least certain bits flipped.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from livegen.safety.watermark import PAYLOAD_BITS, Payload, server_tag

SCHEME = "livegen-audio"
READ_RATE = 16000
PERIOD_S = Fraction(6, 5)
PERIOD = int(PERIOD_S * READ_RATE)  # 19,200 samples at 16 kHz
SLOT = 100  # samples at 16 kHz a payload sign lasts: 6.25 ms
SLOTS = PERIOD // SLOT  # 192
REPEATS = SLOTS // PAYLOAD_BITS  # 4 slots a bit
BAND = (500.0, 6000.0)  # Hz: under 16 kHz's Nyquist with room for a resampler's filter
PILOT_SHARE = 0.2  # of the mark's energy; the rest carries the payload
STRENGTH = 0.04  # mark RMS over the speech envelope: segmental SNR about 27 dB
ENVELOPE_MS = 10.0  # the follower's time constant: the mark rises and falls with each syllable
FLIP_BITS = 3  # the CRC tries up to 8 readings: 1 s cuts read 97% -> 100%, 0.8 s 92% -> 97% (96 cuts)
DETECT_SCORE = 8.0  # the pilot's peak over the correlation's RMS; unmarked audio peaks at 4-6
STFT_SAMPLES = 512  # 32 ms at 16 kHz, for the reader's whitening
WHITEN_SPAN = (9, 3)  # bins x frames the magnitude is smoothed over
MIN_RATE = 2 * int(BAND[1]) + 1  # below this the band does not fit
FOLLOW_BLOCK = 1024  # samples the follower's closed form spans: a**-1024 stays far inside float64 at any rate

assert PERIOD == SLOTS * SLOT and SLOTS == REPEATS * PAYLOAD_BITS


def _chips(name: str, count: int) -> np.ndarray:
    """A keyed +-1 sequence, the same with every numpy."""
    data = hashlib.shake_256(f"livegen-audio-watermark/{name}".encode()).digest((count + 7) // 8)
    return 1.0 - 2.0 * np.unpackbits(np.frombuffer(data, np.uint8))[:count].astype(np.float64)


def _band_limit(x: np.ndarray) -> np.ndarray:
    """Circular (the period repeats) band-pass of one or more 16 kHz periods."""
    spectrum = np.fft.rfft(x, axis=-1)
    spectrum[..., ~_key().band] = 0
    return np.fft.irfft(spectrum, x.shape[-1], axis=-1)


@dataclass(frozen=True)
class _Key:
    band: np.ndarray  # which rfft bins of one period lie in BAND
    data: np.ndarray  # (PERIOD,) +-1 payload chips
    pilot: np.ndarray  # (PERIOD,) the pilot, band-limited, unit RMS
    pilot_spectrum: np.ndarray  # its rfft, conjugated: the reader's correlation
    owners: np.ndarray  # (SLOTS, PAYLOAD_BITS) one-hot: which bit each slot carries


@lru_cache(maxsize=1)
def _key() -> _Key:
    frequencies = np.fft.rfftfreq(PERIOD, 1 / READ_RATE)
    band = (frequencies >= BAND[0]) & (frequencies <= BAND[1])
    spectrum = np.fft.rfft(_chips("pilot", PERIOD))
    spectrum[~band] = 0
    pilot = np.fft.irfft(spectrum, PERIOD)
    pilot /= np.sqrt(np.mean(pilot**2))
    # Each quarter of the period carries every bit once, in its own keyed order: any stretch of a
    # period holds all the bits, and any 0.9 s holds each at least twice.
    owners = np.zeros((SLOTS, PAYLOAD_BITS))
    for quarter in range(REPEATS):
        order = sorted(range(PAYLOAD_BITS), key=lambda i: hashlib.sha256(
            f"livegen-audio-watermark/slot/{quarter}/{i}".encode()).digest())
        owners[quarter * PAYLOAD_BITS + np.arange(PAYLOAD_BITS), order] = 1
    # float32: the reader's batched FFTs and products run at single precision
    return _Key(band, _chips("data", PERIOD).astype(np.float32), pilot.astype(np.float32),
                np.conj(np.fft.rfft(pilot)).astype(np.complex64), owners.astype(np.float32))


def mark_period(payload: Payload, sample_rate: int) -> np.ndarray:
    """One period of the mark carrying `payload`, at `sample_rate`, unit RMS (float32)."""
    samples = PERIOD_S * sample_rate
    if samples.denominator != 1 or sample_rate < MIN_RATE:
        raise ValueError(f"cannot watermark audio at {sample_rate} Hz: the rate must be at least {MIN_RATE} Hz "
                         f"and make {float(PERIOD_S)} s a whole number of samples")
    key = _key()
    signs = 1.0 - 2.0 * (key.owners @ np.array(payload.bits(), dtype=np.float64))
    data = _band_limit(key.data * np.repeat(signs, SLOT))
    wave = np.sqrt(1 - PILOT_SHARE) * data / np.sqrt(np.mean(data**2)) + np.sqrt(PILOT_SHARE) * key.pilot
    if sample_rate != READ_RATE:  # band-limited and periodic: exact
        wave = np.fft.irfft(np.fft.rfft(wave), int(samples)) * (int(samples) / PERIOD)
    return (wave / np.sqrt(np.mean(wave**2))).astype(np.float32)


class UtteranceMark:
    """Marks one utterance's audio, chunk after chunk, carrying its offset and envelope state."""

    def __init__(self, payload: Payload, sample_rate: int):
        self.payload = payload
        self.wave = mark_period(payload, sample_rate)
        self.position = 0
        self._envelope = Follower(np.exp(-1000.0 / (ENVELOPE_MS * sample_rate)))

    def mark(self, audio: np.ndarray) -> np.ndarray:
        """The next chunk of the utterance (float, mono), marked; the chunk after it continues."""
        audio = np.asarray(audio, dtype=np.float32)
        power = self._envelope(np.square(audio, dtype=np.float64))
        wave = self.wave.take(np.arange(self.position, self.position + len(audio)), mode="wrap")
        self.position = (self.position + len(audio)) % len(self.wave)
        return audio + (STRENGTH * np.sqrt(power)).astype(np.float32) * wave


class Follower:
    """The causal follower y[n] = a y[n-1] + (1 - a) x[n] from y[-1] = 0, fed chunk after chunk.

    scipy.signal.lfilter's recursion, in numpy's vector operations: over a block of FOLLOW_BLOCK
    samples counted from the utterance's start, y[k] = a^(k+1) (y0 + (1 - a) sum_{j<=k} x[j] / a^(j+1)),
    with y0 the value before the block. A chunk that ends inside a block carries the running sum
    (numpy's cumsum adds in order), so any chunking gives the same samples, bit for bit."""

    def __init__(self, a: float):
        self.a = a
        self.powers = a ** np.arange(1, FOLLOW_BLOCK + 1, dtype=np.float64)  # one table: the same values every call
        self.count = 0  # samples followed
        self.before = 0.0  # y before the current block
        self.sum = 0.0  # the current block's running sum so far

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.empty(len(x))
        done = 0
        while done < len(x):
            k = self.count % FOLLOW_BLOCK
            take = min(len(x) - done, FOLLOW_BLOCK - k)
            powers = self.powers[k:k + take]
            sums = np.cumsum(np.concatenate(([self.sum], x[done:done + take] / powers)))[1:]
            y[done:done + take] = powers * (self.before + (1 - self.a) * sums)
            self.sum, self.count, done = sums[-1], self.count + take, done + take
            if self.count % FOLLOW_BLOCK == 0:
                self.before, self.sum = y[done - 1], 0.0
        return y


class AudioWatermarker:
    """This server's mark: its tag (the frame watermark's, from the same server id) on each utterance."""

    def __init__(self, server_id: str, sample_rate: int):
        self.tag = server_tag(server_id)
        self.sample_rate = sample_rate
        mark_period(Payload(self.tag, 0), sample_rate)  # an unusable rate fails here, at load

    def utterance(self, counter: int) -> UtteranceMark:
        return UtteranceMark(Payload(self.tag, counter % 2**16), self.sample_rate)


@dataclass
class AudioReading:
    scheme: str
    present: bool  # the pilot stands above DETECT_SCORE: a livegen mark is there
    payload: Payload | None  # read only when present and its CRC matches
    score: float  # the pilot's peak in robust standard deviations
    bits: list[int]
    seconds: float

    @property
    def detected(self) -> bool:
        return self.payload is not None


def to_read_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(..., n) audio at `sample_rate` -> float64 at READ_RATE."""
    audio = np.asarray(audio, dtype=np.float64)
    if sample_rate == READ_RATE:
        return audio
    from scipy import signal

    ratio = Fraction(READ_RATE, sample_rate)
    return signal.resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1)


def read(audio: np.ndarray, sample_rate: int) -> AudioReading:
    """Read the mark of mono (n,) or multichannel (n, channels) audio, as soundfile gives it."""
    # A float WAV may hold NaN or infinities: read them as silence and full scale.
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise ValueError(f"expected (samples,) or (samples, channels) audio, got shape {audio.shape}")
    return read_batch(audio[None], sample_rate)[0]


def read_batch(segments: np.ndarray, sample_rate: int) -> list[AudioReading]:
    """Read (B, n) mono segments of equal length at once (what the false-positive count needs)."""
    from scipy import fft as sfft

    y = to_read_rate(np.atleast_2d(segments), sample_rate)
    count, length = y.shape
    seconds = segments.shape[-1] / sample_rate
    if length < STFT_SAMPLES:
        return [AudioReading(SCHEME, False, None, 0.0, [0] * PAYLOAD_BITS, seconds) for _ in range(count)]
    y = _whiten(y)
    periods = -(-length // PERIOD)
    folded = np.pad(y, ((0, 0), (0, periods * PERIOD - length))).reshape(count, periods, PERIOD).sum(axis=1)
    key = _key()
    spectrum = sfft.rfft(folded, axis=-1)
    # correlation[b, t] = sum_n folded[b, (t + n) % PERIOD] * pilot[n]: the pilot's start sits at t.
    # Unmarked, it is noise around 0 (nothing of the band reaches DC), so its RMS is the scale.
    correlation = np.abs(sfft.irfft(spectrum * key.pilot_spectrum, PERIOD, axis=-1))
    peak = correlation.argmax(axis=-1)
    top, before, after = (np.take_along_axis(correlation, ((peak + d) % PERIOD)[:, None], axis=-1)[:, 0]
                          for d in (0, -1, 1))
    spread = np.sqrt(np.mean(np.square(correlation), axis=-1))
    score = np.where(spread > 0, top / np.maximum(spread, 1e-30), 0.0)
    # The pilot's start to a fraction of a sample (a parabola through the peak and its neighbours):
    # audio cut from a 24 kHz reply lands between 16 kHz samples.
    curvature = before - 2 * top + after
    start = peak + np.where(curvature < 0, 0.5 * (before - after) / np.where(curvature < 0, curvature, 1), 0)
    # Shift the folded period back by `start` (it is periodic: a phase ramp shifts it exactly),
    # and undo a polarity flip, which flips the pilot too.
    ramp = np.exp(2j * np.pi * np.fft.rfftfreq(PERIOD)[None] * start[:, None]).astype(np.complex64)
    aligned = sfft.irfft(spectrum * ramp, PERIOD, axis=-1)
    aligned *= np.sign(aligned @ key.pilot)[:, None]
    votes = ((aligned * key.data).reshape(count, SLOTS, SLOT).sum(axis=-1)) @ key.owners
    readings = []
    for votes_b, score_b in zip(votes, score):
        bits = [int(v < 0) for v in votes_b]
        present = bool(score_b >= DETECT_SCORE)
        payload = _decode(bits, np.abs(votes_b)) if present else None
        readings.append(AudioReading(SCHEME, present, payload, float(score_b), bits, seconds))
    return readings


def _decode(bits: list[int], confidence: np.ndarray) -> Payload | None:
    """The likeliest payload whose CRC matches: the bits as read, else with some of the FLIP_BITS
    least confident ones flipped, the least confidence lost first (a reply of a second or so leaves
    a bit or two in doubt). Each try is another 1 in 65,536 chance for damaged bits to pass."""
    weakest = np.argsort(confidence)[:FLIP_BITS]
    lost = lambda mask: sum(confidence[index] for i, index in enumerate(weakest) if mask >> i & 1)  # noqa: E731
    masks = sorted(range(2**FLIP_BITS), key=lost)
    for mask in masks:
        trial = list(bits)
        for i, index in enumerate(weakest):
            trial[index] ^= (mask >> i) & 1
        if (payload := Payload.from_bits(trial)) is not None:
            return payload
    return None


def _whiten(y: np.ndarray) -> np.ndarray:
    """Flatten the spectrum within BAND (each bin over its smoothed neighbourhood), drop the rest.

    An STFT with a square-root Hann window at 50% overlap on both sides, which adds back to the
    signal exactly; scipy's batched float32 FFTs over the band's bins alone, several times faster
    than scipy.signal.stft here (the false-positive count reads a thousand segments)."""
    from scipy import fft as sfft
    from scipy import ndimage

    count, length = y.shape
    hop = STFT_SAMPLES // 2
    frames = -(-length // hop) + 1
    padded = np.pad(y.astype(np.float32), ((0, 0), (hop, (frames + 1) * hop - hop - length)))
    window = np.sin(np.pi * np.arange(STFT_SAMPLES, dtype=np.float32) / STFT_SAMPLES)
    low, high = (int(np.ceil(f * STFT_SAMPLES / READ_RATE)) for f in BAND)
    spectrum = sfft.rfft(sliding_window_view(padded, STFT_SAMPLES, axis=-1)[:, ::hop][:, :frames] * window)
    band = spectrum[..., low:high]
    magnitude = ndimage.uniform_filter(np.abs(band), size=(1, WHITEN_SPAN[1], WHITEN_SPAN[0]), mode="nearest")
    white_band = band / (magnitude + 1e-9)
    spectrum[...] = 0
    spectrum[..., low:high] = white_band
    pieces = sfft.irfft(spectrum, STFT_SAMPLES) * window
    white = np.zeros((count, (frames + 1) * hop), dtype=np.float32)
    white[:, : frames * hop] += pieces[..., :hop].reshape(count, -1)
    white[:, hop:] += pieces[..., hop:].reshape(count, -1)
    return white[:, hop : hop + length]


# --- what a reply may go through -----------------------------------------------------------------

ATTACKS = ("none", "resample_16k", "mp3_64k", "opus_64k")
MP3_64K = 0.6  # libsndfile's compression level for LAME at 64 kbit/s CBR (MPEG-2 layer III, 16-24 kHz)
OPUS_64K = 1 - (64_000 - 6_000) / 250_000  # libsndfile maps 0..1 onto 256..6 kbit/s for mono Opus


def attack(audio: np.ndarray, sample_rate: int, name: str) -> tuple[np.ndarray, int]:
    """One of ATTACKS on mono float audio: (the result, its rate). Lossy codecs through libsndfile."""
    import soundfile

    if name == "none":
        return audio, sample_rate
    if name == "resample_16k":
        return to_read_rate(audio, sample_rate).astype(np.float32), READ_RATE
    if name in ("mp3_64k", "opus_64k"):
        buffer = io.BytesIO()
        if name == "mp3_64k":
            soundfile.write(buffer, audio, sample_rate, format="MP3", subtype="MPEG_LAYER_III",
                            compression_level=MP3_64K, bitrate_mode="CONSTANT")
        else:
            soundfile.write(buffer, audio, sample_rate, format="OGG", subtype="OPUS", compression_level=OPUS_64K)
        buffer.seek(0)
        decoded, rate = soundfile.read(buffer, dtype="float32")
        return decoded, rate
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


def segmental_snr(original: np.ndarray, marked: np.ndarray, sample_rate: int, frame_ms: float = 20.0) -> float:
    """Mean SNR (dB) of the mark over 20 ms frames with speech in them (within 40 dB of the loudest),
    each frame's clipped to [-10, 35] dB as the usual segmental SNR does."""
    size = int(sample_rate * frame_ms / 1000)
    frames = min(len(original), len(marked)) // size
    x = np.asarray(original[: frames * size], dtype=np.float64).reshape(frames, size)
    noise = np.asarray(marked[: frames * size], dtype=np.float64).reshape(frames, size) - x
    power, noise_power = np.square(x).sum(axis=1), np.square(noise).sum(axis=1)
    speech = power > 1e-4 * power.max()
    snr = 10 * np.log10(power[speech] / np.maximum(noise_power[speech], 1e-20))
    return float(np.mean(np.clip(snr, -10, 35)))
