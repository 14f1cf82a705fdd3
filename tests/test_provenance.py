"""C2PA Content Credentials: signed images read back as livegen-made, trusted under the dev root, tamper-evident."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from livegen import __version__
from livegen.safety.provenance import (TRAINED_ALGORITHMIC_MEDIA, Provenance, ProvenanceError, SigningKeys,
                                       init_keys, read_manifest)

GENERATION = {"model": "sd-turbo", "steps": 1, "seed": 2**40 + 7, "guidance": 0.0, "size": "512x512",
              "prompt_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def image_bytes(mime_type: str, size: int = 64) -> bytes:
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, FORMATS[mime_type])
    return buffer.getvalue()


def flip_pixel_byte(image: bytes, mime_type: str) -> bytes:
    """Change one byte of compressed pixel data, far from the manifest, keeping the container well formed."""
    data = bytearray(image)
    if mime_type == "image/jpeg":
        offset = 2
        while data[offset + 1] != 0xDA:  # walk the segments (the manifest is in APP11) to start-of-scan
            offset += 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]
        scan_start = offset + 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]
        index = (scan_start + data.rindex(b"\xff\xd9")) // 2
        while 0xFF in (data[index - 1], data[index], data[index] ^ 1):  # never make or break a marker
            index += 1
        data[index] ^= 1
        return bytes(data)
    offset = 8
    while data[offset + 4:offset + 8] != b"IDAT":  # the manifest is in its own caBX chunk
        offset += 12 + struct.unpack(">I", data[offset:offset + 4])[0]
    length = struct.unpack(">I", data[offset:offset + 4])[0]
    data[offset + 8 + length // 2] ^= 1
    data[offset + 8 + length:offset + 12 + length] = struct.pack(">I", zlib.crc32(data[offset + 4:offset + 8 + length]))
    return bytes(data)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    return init_keys(tmp_path_factory.mktemp("keys") / "dev")


@pytest.fixture(scope="module")
def provenance(keys: SigningKeys) -> Provenance:
    return Provenance(keys)


@pytest.mark.parametrize(("mime_type", "size"), [("image/jpeg", 64), ("image/jpeg", 512), ("image/png", 64),
                                                  ("image/png", 512), ("image/webp", 64)])
def test_signed_image_reads_back_valid_trusted_and_ai_generated(provenance, keys, mime_type, size):
    original = image_bytes(mime_type, size)
    signed = provenance.sign(original, mime_type, GENERATION)

    report = read_manifest(signed, mime_type, root=keys.root)

    assert (report.present, report.valid, report.trusted, report.errors) == (True, True, True, [])
    assert report.validation_state == "Trusted"
    assert report.generation == GENERATION
    assert [(a["action"], a["digitalSourceType"]) for a in report.actions] == [("c2pa.created",
                                                                                 TRAINED_ALGORITHMIC_MEDIA)]
    assert report.claim_generator == f"livegen {__version__}"
    assert report.signer == "livegen development"
    assert Image.open(io.BytesIO(signed)).size == (size, size)  # still an ordinary image


@pytest.mark.parametrize("mime_type", ["image/jpeg", "image/png"])
def test_changed_pixels_break_the_hard_binding(provenance, keys, mime_type):
    signed = provenance.sign(image_bytes(mime_type), mime_type, GENERATION)
    tampered = flip_pixel_byte(signed, mime_type)
    assert tampered != signed and Image.open(io.BytesIO(tampered)).size == (64, 64)

    report = read_manifest(tampered, mime_type, root=keys.root)

    # The manifest still parses and its signature still holds; only the data hash fails.
    assert report.present and report.generation == GENERATION
    assert not report.valid and report.validation_state == "Invalid"
    assert [error.split(":")[0] for error in report.errors] == ["assertion.dataHash.mismatch"]
    assert report.trusted  # the signer is still the trusted dev signer; the image is not what they signed


def test_image_without_manifest_is_not_present():
    report = read_manifest(image_bytes("image/png"), "image/png")

    assert not report.present and not report.valid and report.generation is None


def test_without_the_root_the_signature_validates_but_is_untrusted(provenance):
    signed = provenance.sign(image_bytes("image/jpeg"), "image/jpeg", GENERATION)

    report = read_manifest(signed, "image/jpeg")

    assert report.valid and not report.trusted and report.validation_state == "Valid"
    assert [error.split(":")[0] for error in report.errors] == ["signingCredential.untrusted"]
    assert report.generation == GENERATION


def test_another_root_does_not_make_the_signer_trusted(provenance, tmp_path):
    signed = provenance.sign(image_bytes("image/jpeg"), "image/jpeg", GENERATION)
    stranger = init_keys(tmp_path / "other", common_name="someone else")

    report = read_manifest(signed, "image/jpeg", root=stranger.root)

    assert report.valid and not report.trusted


def test_init_keys_writes_a_private_key_only_its_owner_can_read_and_never_overwrites(tmp_path):
    keys = init_keys(tmp_path / "keys")
    chain = keys.cert_chain.read_bytes()

    assert keys.private_key.stat().st_mode & 0o777 == 0o600
    assert keys.root is not None and keys.root.exists()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        init_keys(tmp_path / "keys")
    assert keys.cert_chain.read_bytes() == chain


@pytest.mark.parametrize("missing", ["cert_chain", "private_key"])
def test_missing_key_file_is_an_error_naming_it(keys, tmp_path, missing):
    absent = tmp_path / "absent.pem"
    broken = SigningKeys(**{"cert_chain": keys.cert_chain, "private_key": keys.private_key, missing: absent})

    with pytest.raises(ProvenanceError, match=str(absent)):
        Provenance(broken)


def test_key_that_does_not_match_the_certificate_is_refused(keys, tmp_path):
    other = init_keys(tmp_path / "other")

    with pytest.raises(ProvenanceError, match="does not belong"):
        Provenance(SigningKeys(keys.cert_chain, other.private_key))


def test_missing_trust_anchor_is_an_error_naming_it(provenance, tmp_path):
    signed = provenance.sign(image_bytes("image/jpeg"), "image/jpeg", GENERATION)

    with pytest.raises(ProvenanceError, match=str(tmp_path / "root.pem")):
        read_manifest(signed, "image/jpeg", root=tmp_path / "root.pem")


def test_generation_values_that_would_not_read_back_are_refused(provenance):
    with pytest.raises(ValueError, match="size"):
        provenance.sign(image_bytes("image/jpeg"), "image/jpeg", {**GENERATION, "size": [64, 64]})
