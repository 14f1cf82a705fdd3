"""Invisible watermark on every frame: which server made it and which frame it was.

Payload, PAYLOAD_BITS = 48 bits, most significant bit first:

    bits  0-15  server tag: the first two bytes of sha256(server id)
    bits 16-31  frame counter, modulo 2**16
    bits 32-47  CRC-16/CCITT-FALSE (binascii.crc_hqx, initial value 0xFFFF) of the four bytes
                above; `read` reports a mark only when it matches, so an unmarked image passes
                for a marked one with odds of about 1 in 65,536

Two schemes, picked by frame area with the same rule in `embed` and `read`:

- "dwtdct", frames of at least 256*256 pixels: the "dwtDct" method of invisible-watermark
  (module imwatermark), so that `WatermarkDecoder('bits', 48).decode(bgr, 'dwtDct')` reads our
  frames and `read` reads frames its encoder marked, bit for bit as its decoder does. The U
  channel of cv2's YUV (U = 0.492 (B - Y) + 128) goes through one Haar DWT level; the
  approximation band is cut into 4x4 blocks, taken row by row, and block n carries bit n % 48.
  In each block the largest value after the first sits at 9 (bit 0) or 27 (bit 1) modulo 36;
  the decoder votes over all the blocks of a bit. Unlike imwatermark's encoder, which moves that
  value within its own 36-wide cell, we move it to the cheaper of the nearest levels below and
  above and keep it the largest of its block (its own encoder loses bits in flat regions), with
  the smallest RGB change that moves U.
- "livegen-small", smaller frames (the embedded model serves 64x64): dither-modulated
  quantisation (QIM), step 20, of the 14 lowest-frequency AC coefficients (JPEG zigzag order)
  of each 8x8 block DCT of luma, changed by the smallest RGB change that moves luma. A keyed
  permutation spreads each bit's repeats over the frame and the reader sums their soft votes.
  JPEG quantises these coefficients least, so the mark survives JPEG; a crop or a rescale moves
  the block grid and mostly erases it.

Both embedders are batched torch ops on the frames' own device. Saturated pixels move only in
the channels that have room; the small scheme takes a second pass that re-reads the clipped
frame, where dwtdct's wider margin needs none.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PAYLOAD_BITS = 48
TAG_BITS = 16
COUNTER_BITS = 16

DWTDCT_MIN_AREA = 256 * 256  # imwatermark refuses smaller images
DWTDCT_SCALE = 36.0  # imwatermark's default scale for U
DWTDCT_MARGIN = 4.0  # how far the marked coefficient stays above the block's runner-up
SMALL_STEP = 20.0  # JPEG-75 moves most of these coefficients by at most 4, a quarter step is 5
# AC coefficients 1-14 in JPEG zigzag order; DC is left alone: clipping at 0 and 255 biases it.
SMALL_ZIGZAG = (
    (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2),
    (2, 1), (3, 0), (4, 0), (3, 1), (2, 2), (1, 3), (0, 4),
)
SMALL_PASSES = 2

LUMA = (0.299, 0.587, 0.114)
U_GAIN = 0.492  # cv2: U = 0.492 (B - Y) + 128
U_FROM_RGB = (-U_GAIN * LUMA[0], -U_GAIN * LUMA[1], U_GAIN * (1 - LUMA[2]))

ATTACKS = ("none", "jpeg75", "resize_half", "crop10")


@dataclass(frozen=True)
class Payload:
    server: int
    counter: int

    def __post_init__(self) -> None:
        if not (0 <= self.server < 2**TAG_BITS and 0 <= self.counter < 2**COUNTER_BITS):
            raise ValueError(f"payload out of range: {self}")

    def bits(self) -> list[int]:
        data = self.server.to_bytes(2, "big") + self.counter.to_bytes(2, "big")
        word = int.from_bytes(data + binascii.crc_hqx(data, 0xFFFF).to_bytes(2, "big"), "big")
        return [(word >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)]

    @classmethod
    def from_bits(cls, bits: list[int]) -> Payload | None:
        """The payload these bits carry, or None when their CRC does not match."""
        word = int("".join(str(bit) for bit in bits), 2)
        data = (word >> 16).to_bytes(4, "big")
        if binascii.crc_hqx(data, 0xFFFF) != word & 0xFFFF:
            return None
        return cls(word >> 32, (word >> 16) & 0xFFFF)


def server_tag(server_id: str) -> int:
    return int.from_bytes(hashlib.sha256(server_id.encode()).digest()[:2], "big")


class Watermarker:
    """Marks batches of frames with this server's tag and each frame's counter."""

    def __init__(self, server_id: str):
        self.tag = server_tag(server_id)

    def embed(self, pixels: torch.Tensor, counters: list[int]) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB frames -> the same frames, frame i marked with counters[i]."""
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (B, H, W, 3) uint8 frames, got {pixels.dtype} {tuple(pixels.shape)}")
        if len(counters) != pixels.shape[0]:
            raise ValueError(f"{len(counters)} counters for {pixels.shape[0]} frames")
        payloads = [Payload(self.tag, counter % 2**COUNTER_BITS).bits() for counter in counters]
        bits = torch.tensor(payloads, dtype=torch.float32, device=pixels.device)
        if _uses_dwtdct(*pixels.shape[1:3]):
            mark_, passes = _dwtdct_mark_, 1
        else:
            mark_, passes = _small_mark_, SMALL_PASSES
        with torch.autocast(pixels.device.type, enabled=False):  # the levels need float32, not half
            x = pixels.float()
            for _ in range(passes):
                mark_(x, bits)
                x.clamp_(0, 255)
            return x.round_().to(torch.uint8)


@dataclass
class Reading:
    scheme: str  # "dwtdct" or "livegen-small"
    payload: Payload | None  # None when no livegen mark is detected
    bits: list[int]
    detected: bool


def read(image: np.ndarray) -> Reading:
    """Read the mark of one (H, W, 3) uint8 RGB image, with the scheme its size calls for."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).unsqueeze(0)
    if _uses_dwtdct(*image.shape[:2]):
        scheme, bits = "dwtdct", _dwtdct_read(pixels)
    else:
        scheme, bits = "livegen-small", _small_read(pixels.float())
    payload = Payload.from_bits(bits)
    return Reading(scheme, payload, bits, payload is not None)


def _uses_dwtdct(height: int, width: int) -> bool:
    return height * width >= DWTDCT_MIN_AREA


@lru_cache
def _constants(device: torch.device) -> dict[str, torch.Tensor]:
    n = torch.arange(8, dtype=torch.float64)
    dct = torch.cos(math.pi * (2 * n + 1) * n[:, None] / 16) * math.sqrt(2 / 8)
    dct[0] /= math.sqrt(2)  # orthonormal 8-point DCT-II, as JPEG uses
    basis = torch.stack([torch.outer(dct[u], dct[v]) for u, v in SMALL_ZIGZAG])
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    return {
        "luma": as_tensor(LUMA),
        "u_from_rgb": as_tensor(U_FROM_RGB),
        "basis": basis.reshape(len(SMALL_ZIGZAG), 64).to(device, torch.float32),
    }


def _move(low: torch.Tensor, high: torch.Tensor, amount: torch.Tensor, gradient: str) -> torch.Tensor:
    """The smallest RGB change that moves `rgb @ gradient` by `amount` where pixels lie between
    `low` and `high`, using only the channels with room to move that way: saturated pixels would
    clip the change away."""
    g = _constants(amount.device)[gradient]
    free = torch.where(amount.unsqueeze(-1) * g > 0, high < 255, low > 0)
    g = g * free
    return amount.unsqueeze(-1) * g / (g * g).sum(-1, keepdim=True).clamp_min(1e-6)


# --- dwtdct -------------------------------------------------------------------------------


@lru_cache
def _block_bits(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """Which payload bit each 4x4 block of the approximation band carries."""
    return (torch.arange(rows * cols, device=device) % PAYLOAD_BITS).reshape(rows, cols)


def _dwtdct_blocks(u: torch.Tensor) -> torch.Tensor:
    """(B, H, W) U plane -> (B, H//8, W//8, 16): 4x4 blocks of its Haar approximation band."""
    b, rows, cols = u.shape[0], u.shape[1] // 8, u.shape[2] // 8
    u = u[:, : rows * 8, : cols * 8]
    # pywt's Haar step, rows then columns: a value on a cell boundary rounds as imwatermark sees it.
    k = math.sqrt(0.5)
    u = u[:, 0::2] * k + u[:, 1::2] * k
    band = u[:, :, 0::2] * k + u[:, :, 1::2] * k
    return band.reshape(b, rows, 4, cols, 4).transpose(2, 3).reshape(b, rows, cols, 16)


def _dwtdct_mark_(x: torch.Tensor, bits: torch.Tensor) -> None:
    b = x.shape[0]
    blocks = _dwtdct_blocks(x @ _constants(x.device)["u_from_rgb"] + 128)
    rows, cols = blocks.shape[1:3]
    # U lies in 17..239, so band values are positive and the largest magnitude is the maximum.
    rest = blocks[..., 1:]
    top, index = rest.max(-1, keepdim=True)
    is_top = torch.zeros_like(rest, dtype=torch.bool).scatter_(-1, index, True)
    level = (0.25 + 0.5 * bits[:, _block_bits(rows, cols, x.device)]).unsqueeze(-1) * DWTDCT_SCALE
    below = torch.floor((top - level) / DWTDCT_SCALE) * DWTDCT_SCALE + level
    # Move the top value to the level below or above it, whichever costs less, and push the
    # others under it by the margin so that the decoder still picks it.
    candidates = [
        torch.where(is_top, target, rest.clamp(max=target - DWTDCT_MARGIN))
        for target in (below, below + DWTDCT_SCALE)
    ]
    costs = [(candidate - rest).square().sum(-1, keepdim=True) for candidate in candidates]
    band = F.pad(torch.where(costs[0] < costs[1], *candidates) - rest, (1, 0))
    band = band.reshape(b, rows, cols, 4, 4).transpose(2, 3).reshape(b, rows * 4, cols * 4)
    # The four pixels under a band value move together: adding d/2 to each raises it by d.
    # View them as (row pair, column pair * RGB): contiguous, so min and max are fast.
    groups = x[:, : rows * 8, : cols * 8].unflatten(1, (rows * 4, 2)).flatten(3).unflatten(3, (cols * 4, 6))
    top_row, bottom_row = groups.unbind(2)
    low, high = torch.minimum(top_row, bottom_row), torch.maximum(top_row, bottom_row)
    low, high = torch.minimum(low[..., :3], low[..., 3:]), torch.maximum(high[..., :3], high[..., 3:])
    rgb = _move(low, high, band / 2, "u_from_rgb")
    for pixel in (groups[:, :, i, :, j : j + 3] for i in (0, 1) for j in (0, 3)):
        pixel += rgb


def _dwtdct_read(pixels: torch.Tensor) -> list[int]:
    """imwatermark's dwtDct decoder: per block, is the largest value after the first in the
    upper half of its 36-wide cell; a bit is 1 when more than half of its blocks say so."""
    # cv2's fixed-point BGR -> YUV for uint8 (coefficients times 2**14), so that we see its U.
    r, g, b = pixels.int().unbind(-1)
    y = (r * 4899 + g * 9617 + b * 1868 + 8192) >> 14
    u = (((b - y) * 8061 + (128 << 14) + 8192) >> 14).clamp(0, 255)
    blocks = _dwtdct_blocks(u.double())[0]
    rest = blocks[..., 1:]
    value = rest.gather(-1, rest.argmax(-1, keepdim=True)).squeeze(-1)
    score = (value % DWTDCT_SCALE > DWTDCT_SCALE / 2).float().flatten()
    owner = _block_bits(*blocks.shape[:2], pixels.device).flatten()
    ones = torch.zeros(PAYLOAD_BITS, device=pixels.device).index_add_(0, owner, score)
    return (ones / torch.bincount(owner, minlength=PAYLOAD_BITS) * 255 > 127).int().tolist()


# --- livegen-small ----------------------------------------------------------------------------


@lru_cache
def _small_key(slots: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each coefficient slot: the payload bit it carries and its dither, in steps.

    Derived from sha256 so that every version of every library reads the same key."""
    if slots < PAYLOAD_BITS:
        raise ValueError(f"frame too small to watermark: {slots} coefficient slots for {PAYLOAD_BITS} bits")
    digests = [hashlib.sha256(f"livegen-watermark/{i}".encode()).digest() for i in range(slots)]
    owner = torch.empty(slots, dtype=torch.long)
    owner[sorted(range(slots), key=digests.__getitem__)] = torch.arange(slots) % PAYLOAD_BITS
    dither = torch.tensor([int.from_bytes(d[:4], "big") / 2**32 for d in digests])
    return owner.to(device), dither.to(device, torch.float32)


def _small_coefs(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) -> (B, H//8, W//8, 14): the SMALL_ZIGZAG DCT coefficients of luma blocks."""
    consts = _constants(x.device)
    b, h, w, _ = x.shape
    rows, cols = h // 8, w // 8
    luma = x[:, : rows * 8, : cols * 8] @ consts["luma"]
    blocks = luma.reshape(b, rows, 8, cols, 8).transpose(2, 3).reshape(b, rows, cols, 64)
    return blocks @ consts["basis"].T


def _small_mark_(x: torch.Tensor, bits: torch.Tensor) -> None:
    b = x.shape[0]
    coefs = _small_coefs(x)
    rows, cols, k = coefs.shape[1:]
    owner, dither = _small_key(rows * cols * k, x.device)
    coefs = coefs.reshape(b, -1) / SMALL_STEP
    offset = bits[:, owner] / 2 + dither  # the lattice of bit 1 sits half a step from bit 0's
    change = (torch.round(coefs - offset) + offset - coefs) * SMALL_STEP
    luma = change.reshape(b, rows, cols, k) @ _constants(x.device)["basis"]
    luma = luma.reshape(b, rows, cols, 8, 8).transpose(2, 3)
    region = x[:, : rows * 8, : cols * 8]
    region += _move(region, region, luma.reshape(b, rows * 8, cols * 8), "luma")


def _small_read(x: torch.Tensor) -> list[int]:
    coefs = _small_coefs(x).flatten()
    if coefs.numel() < PAYLOAD_BITS:  # too small to carry a mark
        return [0] * PAYLOAD_BITS
    owner, dither = _small_key(coefs.numel(), x.device)
    votes = torch.cos(2 * math.pi * (coefs / SMALL_STEP - dither))  # +1 on bit 0's lattice, -1 on bit 1's
    return (torch.zeros(PAYLOAD_BITS, device=x.device).index_add_(0, owner, votes) < 0).int().tolist()


# --- robustness ---------------------------------------------------------------------------------


def attack(image: np.ndarray, name: str) -> np.ndarray:
    """One of ATTACKS on an (H, W, 3) uint8 RGB image; the result has the same size.

    "crop10" cuts 10% of the area away (the same fraction from each side, about 2.6% of the
    width and height each) and scales the rest back up, bilinear."""
    picture = Image.fromarray(image)
    size = picture.size
    if name == "none":
        return image
    if name == "jpeg75":
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=75)
        return np.asarray(Image.open(buffer).convert("RGB"))
    if name == "resize_half":
        half = (size[0] // 2, size[1] // 2)
        return np.asarray(picture.resize(half, Image.BILINEAR).resize(size, Image.BILINEAR))
    if name == "crop10":
        keep = math.sqrt(0.9)
        w, h = round(size[0] * keep), round(size[1] * keep)
        left, top = (size[0] - w) // 2, (size[1] - h) // 2
        return np.asarray(picture.crop((left, top, left + w, top + h)).resize(size, Image.BILINEAR))
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


def robustness(images: list[np.ndarray], encoder: str = "livegen") -> dict[str, float]:
    """Mean bit accuracy of `read` per attack, each image marked with a known payload.

    encoder="imwatermark" marks with invisible-watermark's own dwtDct encoder (images of at
    least 256*256 pixels) instead of ours, for comparison; `read` reads both."""
    watermarker = Watermarker("robustness")
    accuracy: dict[str, list[float]] = {name: [] for name in ATTACKS}
    for i, image in enumerate(images):
        expected = Payload(watermarker.tag, i).bits()
        if encoder == "livegen":
            marked = watermarker.embed(torch.tensor(image).unsqueeze(0), [i])[0].numpy()
        elif encoder == "imwatermark":
            from imwatermark import WatermarkEncoder  # optional: only for comparison

            imw = WatermarkEncoder()
            imw.set_watermark("bits", expected)
            marked = imw.encode(np.ascontiguousarray(image[..., ::-1]), "dwtDct")[..., ::-1]
        else:
            raise ValueError(f"unknown encoder {encoder!r}; known: livegen, imwatermark")
        for name in ATTACKS:
            bits = read(attack(np.ascontiguousarray(marked), name)).bits
            accuracy[name].append(float(np.mean(np.equal(bits, expected))))
    return {name: float(np.mean(values)) for name, values in accuracy.items()}
