"""Generated images with the properties real photos have for the rules (texture, edges, size)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def make_image_bytes(seed: int = 0, size: tuple[int, int] = (320, 240), fmt: str = "JPEG") -> bytes:
    """A textured scene with a shape: > 5 KB, sharp edges, deterministic per seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 160, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(10, size[0] // 2)), int(rng.integers(10, size[1] // 2))
    draw.ellipse(
        (x, y, x + size[0] // 3, y + size[1] // 3),
        fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
    )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
