"""Generated images, unified batches and injectable decoders for the cleaning tests.

The decoders are module-level functions so that worker processes (forkserver) can import them.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import time
import zlib

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from fineharbor.core.cleaning.images import clean_image
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.schema import UNIFIED_SCHEMA, make_sample_id

STALL_MARKER = b"FINEHARBOR-STALL"
CRASH_MARKER = b"FINEHARBOR-CRASH"

ENGLISH = [
    "A red car parked on a quiet street next to a brick building at night.",
    "Two children playing with a yellow ball on a sandy beach near the water.",
    "A bar chart comparing the yearly sales of three products from 2019 to 2023.",
    "A wooden table with a cup of coffee, a notebook and a pair of glasses.",
    "An old lighthouse standing on a rocky coast under a cloudy grey sky.",
]


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A gradient background with random sharp shapes and a little grain (photo-like)."""
    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = (top * (1 - t) + bottom * t) * np.ones((1, width, 1), dtype=np.float32)
    pixels += rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 20))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(10, max(11, width // 3)))
        y1 = y0 + int(rng.integers(10, max(11, height // 3)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=color)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=color)
        else:
            draw.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(2, 8)))
    return image


def blurred(image: Image.Image, radius: float = 8.0) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        options.setdefault("quality", 90)
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
        + chunk(b"IEND", b"")
    )


def row(
    key: str,
    images: list[bytes | None],
    caption: str | None = None,
    turns: list[tuple[str, str]] | None = None,
    source: str = "test",
    origin_uri: str | None = None,
) -> dict:
    if turns is None:
        turns = [("", ENGLISH[0] if caption is None else caption)]
    texts = [{"user": u, "assistant": a} for u, a in turns]
    return {
        "sample_id": make_sample_id(source, key),
        "source": source,
        "origin_uri": origin_uri or f"file:///data/{key}",
        "origin_key": key,
        "images": [{"bytes": b, "path": f"{key}.img"} for b in images],
        "texts": texts,
    }


def batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=UNIFIED_SCHEMA)


def fast_params(**overrides) -> CleanParams:
    """Defaults with a small lingua candidate set (quick to build in each worker)."""
    values = {"language_candidates": ["en", "fr", "zh"], "processes": 2}
    values.update(overrides)
    return CleanParams(**values)


# --------------------------------------------------------------------------- injected decoders


def stalling_decoder(data: bytes, params: CleanParams, *, pair: bool = False):
    """Sleeps far past any test timeout on images carrying the stall marker."""
    if data and STALL_MARKER in data:
        time.sleep(600)
    return clean_image(data, params, pair=pair)


def crashing_decoder(data: bytes, params: CleanParams, *, pair: bool = False):
    """Kills its own process with SIGSEGV on images carrying the crash marker (a decoder bug)."""
    if data and CRASH_MARKER in data:
        os.kill(os.getpid(), signal.SIGSEGV)
    return clean_image(data, params, pair=pair)
