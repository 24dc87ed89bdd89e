"""Model-free signatures: what must match (lossless re-encodes, mirror images) and what not."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from fineharbor.core.signatures.hashing import (
    DIHEDRAL_TURNS,
    ImageDecodeError,
    bits_to_int64,
    decode_rgb,
    dihedral_hashes,
    hamming64,
    image_hashes,
    int64_to_bits,
    perceptual_hashes,
    sha256_bytes,
    sha256_pixels,
)
from fineharbor_tests.conftest import make_image_bytes


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def scene() -> Image.Image:
    return decode_rgb(make_image_bytes(seed=3, size=(320, 240), fmt="PNG"))


def test_lossless_reencode_keeps_pixel_hash_not_byte_hash(scene):
    png_fast = _encode(scene, "PNG", compress_level=1)
    png_small = _encode(scene, "PNG", compress_level=9)
    webp_lossless = _encode(scene, "WEBP", lossless=True)
    assert sha256_bytes(png_fast) != sha256_bytes(png_small) != sha256_bytes(webp_lossless)
    hashes = {sha256_pixels(decode_rgb(b)) for b in (png_fast, png_small, webp_lossless)}
    assert hashes == {sha256_pixels(scene)}


def test_jpeg_decoded_to_png_matches_the_jpeg_pixels():
    jpeg = make_image_bytes(seed=1, fmt="JPEG")
    png = _encode(decode_rgb(jpeg), "PNG")
    assert sha256_pixels(decode_rgb(jpeg)) == sha256_pixels(decode_rgb(png))
    assert sha256_bytes(jpeg) != sha256_bytes(png)


def test_lossy_reencode_and_size_change_the_pixel_hash(scene):
    jpeg = decode_rgb(_encode(scene, "JPEG", quality=70))
    assert sha256_pixels(jpeg) != sha256_pixels(scene)
    # same raw bytes in another shape: the size in the hash input keeps them apart
    flat = Image.frombytes("RGB", (4, 2), bytes(range(24)))
    other = Image.frombytes("RGB", (2, 4), bytes(range(24)))
    assert sha256_pixels(flat) != sha256_pixels(other)


def test_phash_is_imagehash_phash_as_int64(scene):
    phash, _ = perceptual_hashes(scene)
    expected = imagehash.phash(scene)
    assert phash == bits_to_int64(expected.hash)
    assert f"{phash & (2**64 - 1):016x}" == str(expected)
    assert -(2**63) <= phash < 2**63


def test_mirror_phash_matches_a_flipped_copy(scene):
    flipped = scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    phash, phash_flip = perceptual_hashes(scene)
    flipped_phash, flipped_flip = perceptual_hashes(flipped)
    assert hamming64(phash_flip, flipped_phash) <= 2
    assert hamming64(phash, flipped_flip) <= 2
    assert hamming64(phash, flipped_phash) > 8  # without the mirror hash they would not match


def test_phash_survives_resize_and_jpeg(scene):
    phash, _ = perceptual_hashes(scene)
    smaller = scene.resize((192, 144), Image.Resampling.LANCZOS)
    jpeg = decode_rgb(_encode(scene, "JPEG", quality=40))
    assert hamming64(phash, perceptual_hashes(smaller)[0]) <= 4
    assert hamming64(phash, perceptual_hashes(jpeg)[0]) <= 4


def test_int64_bits_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        bits = rng.random(64) < 0.5
        assert (int64_to_bits(bits_to_int64(bits)) == bits).all()
    assert bits_to_int64(np.ones(64, bool)) == -1
    assert hamming64(-1, 0) == 64


def test_undecodable_images_raise_a_decode_error():
    jpeg = make_image_bytes(seed=2)
    for data in (None, b"not an image at all", jpeg[: len(jpeg) // 2]):
        with pytest.raises(ImageDecodeError):
            decode_rgb(data)


def test_image_hashes_reports_size(scene):
    hashes = image_hashes(scene)
    assert (hashes.width, hashes.height) == (320, 240)
    assert len(hashes.sha256_pixels) == 64


def test_turned_hashes_find_rotated_copies_and_aspect_changes_keep_the_hash(scene):
    phash, phash_flip, turns = dihedral_hashes(scene)
    assert (phash, phash_flip) == perceptual_hashes(scene)
    assert len(turns) == len(DIHEDRAL_TURNS) == 6
    for position, turn in enumerate(DIHEDRAL_TURNS):
        rotated = perceptual_hashes(scene.transpose(turn))[0]
        assert hamming64(rotated, turns[position]) <= 2, turn
        assert hamming64(rotated, phash) > 8, turn  # without the turned hashes: no candidate
    squashed = scene.resize((scene.width // 2, scene.height), Image.Resampling.LANCZOS)
    assert hamming64(phash, perceptual_hashes(squashed)[0]) <= 2
    assert image_hashes(scene).phash_dihedral == turns
