"""Model-free image signatures: byte hash, pixel hash and perceptual hashes.

* ``sha256_bytes`` catches byte-identical files (the same file fetched twice).
* ``sha256_pixels`` hashes the decoded RGB pixels together with the size, so a lossless
  re-encode (PNG -> PNG with another zlib level, PNG -> lossless WebP, JPEG -> PNG of the decoded
  pixels) still matches while the byte hash differs.
* ``phash`` is imagehash's 64-bit DCT perceptual hash, robust to resizing and JPEG re-encoding.
  ``phash_flip`` is the perceptual hash of the horizontally mirrored image, so a flipped copy is
  found by comparing one image's ``phash`` against the other's ``phash_flip``.
* ``phash_dihedral`` holds the hashes of the six other rotations and mirrors of the image
  (:data:`DIHEDRAL_TURNS`): with ``phash`` and ``phash_flip`` the image's whole dihedral group.
  A copy rotated by 90/180/270 degrees (or flipped upside down) has a ``phash`` close to one of
  its original's turned hashes. The hashes are taken from the turned 32x32 thumbnail, so the
  turns cost six more 32x32 DCTs and no decode. Thumbnails squash the image to a square, so a
  non-uniform resize (another aspect ratio) keeps the hash, and rotating the thumbnail equals
  the thumbnail of the rotated image.

Perceptual hashes are stored as signed int64 (the 64 bits reinterpreted), the layout Arrow,
DuckDB and faiss binary indexes handle without a custom type: 64 bytes per image for all eight.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps

# imagehash's phash: 8x8 low-frequency DCT block of a 32x32 grayscale thumbnail.
PHASH_SIZE = 8
PHASH_THUMB = PHASH_SIZE * 4
PHASH_BITS = PHASH_SIZE * PHASH_SIZE
_OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>")


class ImageDecodeError(ValueError):
    """An image that cannot be decoded (corrupt, truncated, unsupported)."""


@dataclass(frozen=True)
class ImageHashes:
    """The model-free signatures of one decoded image."""

    width: int
    height: int
    sha256_pixels: str
    phash: int
    phash_flip: int
    phash_dihedral: tuple[int, ...]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_rgb(data: bytes | None) -> Image.Image:
    """Fully decode ``data`` to an RGB image in display orientation.

    EXIF orientation is applied so the hash describes what a viewer (and a model) sees; a full
    ``load()`` makes truncated files fail here rather than later inside a worker's transform.
    Decompression-bomb warnings are errors: the cleaning stage removes such images first.
    """
    if data is None:
        raise ImageDecodeError("no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                return image.convert("RGB")
    except Exception as error:  # PIL raises many types: OSError, SyntaxError, ValueError, ...
        # drop "<_io.BytesIO object at 0x...>" so the same file gives the same message every run
        message = _OBJECT_REPR.sub("", str(error)).strip()
        raise ImageDecodeError(f"{type(error).__name__}: {message}") from error


def sha256_pixels(image: Image.Image) -> str:
    """Hash of mode, size and raw pixels: equal for every lossless encoding of the same image.

    The size is part of the input so two images whose pixel buffers happen to be equal byte
    strings at different shapes (e.g. 2x8 vs 4x4) do not collide.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256()
    digest.update(f"RGB:{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def bits_to_int64(bits: np.ndarray) -> int:
    """Pack 64 booleans (row-major, first bit most significant, as ``str(ImageHash)``) into a
    signed int64 with the same 64 bits."""
    flat = np.asarray(bits, dtype=bool).reshape(-1)
    if flat.size != PHASH_BITS:
        raise ValueError(f"expected {PHASH_BITS} bits, got {flat.size}")
    value = int.from_bytes(np.packbits(flat).tobytes(), "big")
    return value - (1 << 64) if value >= (1 << 63) else value


def int64_to_bits(value: int) -> np.ndarray:
    """Inverse of :func:`bits_to_int64`: 64 booleans, first bit most significant."""
    unsigned = value & ((1 << 64) - 1)
    packed = np.frombuffer(unsigned.to_bytes(8, "big"), dtype=np.uint8)
    return np.unpackbits(packed).astype(bool)


def hamming64(a: int, b: int) -> int:
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def _phash_thumbnail(image: Image.Image) -> Image.Image:
    return image.convert("L").resize((PHASH_THUMB, PHASH_THUMB), Image.Resampling.LANCZOS)


def perceptual_hashes(image: Image.Image) -> tuple[int, int]:
    """(phash, phash of the mirrored image), both as int64.

    imagehash's phash starts by reducing the image to a 32x32 grayscale thumbnail; reducing once
    and mirroring the thumbnail gives the mirrored image's hash for the price of a 32x32 DCT.
    """
    thumb = _phash_thumbnail(image)
    direct = imagehash.phash(thumb, hash_size=PHASH_SIZE)
    mirrored = imagehash.phash(thumb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), PHASH_SIZE)
    return bits_to_int64(direct.hash), bits_to_int64(mirrored.hash)


# The dihedral group without identity and FLIP_LEFT_RIGHT (those are phash and phash_flip).
DIHEDRAL_TURNS = (
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def dihedral_hashes(image: Image.Image) -> tuple[int, int, tuple[int, ...]]:
    """(phash, phash_flip, the phashes of the six :data:`DIHEDRAL_TURNS`), all int64, from one
    32x32 thumbnail."""
    thumb = _phash_thumbnail(image)
    codes = [
        bits_to_int64(imagehash.phash(thumb.transpose(turn), PHASH_SIZE).hash)
        for turn in (Image.Transpose.FLIP_LEFT_RIGHT, *DIHEDRAL_TURNS)
    ]
    direct = bits_to_int64(imagehash.phash(thumb, hash_size=PHASH_SIZE).hash)
    return direct, codes[0], tuple(codes[1:])


def image_hashes(image: Image.Image) -> ImageHashes:
    """All model-free signatures of a decoded RGB image."""
    phash, phash_flip, turns = dihedral_hashes(image)
    return ImageHashes(
        width=image.width,
        height=image.height,
        sha256_pixels=sha256_pixels(image),
        phash=phash,
        phash_flip=phash_flip,
        phash_dihedral=turns,
    )
