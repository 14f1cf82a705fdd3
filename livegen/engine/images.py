"""Images at the edges of the engine: client bytes in, wire-format bytes out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_INPUT_PIXELS = 4096 * 4096
PIL_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}
MEDIA_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}


class BadImage(ValueError):
    pass


def decode_input_image(data: bytes, width: int, height: int) -> np.ndarray:
    """Decode a JPEG/PNG/WebP and centre-crop it to the served size: (H, W, 3) uint8.

    The format is read from the bytes, and only these three decoders are tried: Pillow's many others
    (TIFF, PSD, EPS and the rest) are attack surface no camera or canvas needs.
    """
    try:
        with Image.open(io.BytesIO(data), formats=list(PIL_FORMATS.values())) as image:
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise BadImage(f"input image is {image.width}x{image.height}; at most {MAX_INPUT_PIXELS} pixels")
            image.load()
            rgb = ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.BILINEAR)
    except BadImage:
        raise
    except UnidentifiedImageError as exc:
        raise BadImage("input image must be JPEG, PNG or WebP (read from its bytes)") from exc
    except Exception as exc:  # PIL raises many types for broken files
        raise BadImage(f"input image could not be decoded: {exc}") from exc
    return np.asarray(rgb)


def image_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two same-sized images, centred so that brightness alone does not count."""
    x = a.astype(np.float32).ravel() / 127.5 - 1.0
    y = b.astype(np.float32).ravel() / 127.5 - 1.0
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / norms if norms else float(np.array_equal(a, b))


def encode_frame(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt != "png" else {"compress_level": 1}
    Image.fromarray(pixels).save(buffer, PIL_FORMATS[fmt], **options)
    return buffer.getvalue()
