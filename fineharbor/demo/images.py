"""Pixel helpers for the demo generator: textures, encoding, transforms and broken files.

Everything takes an explicit ``numpy.random.Generator`` so output is reproducible byte for byte.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# What cleaning must accept comfortably (LAION / FineVision / DanQing defaults, with margin).
MIN_CLEAN_BYTES = 6 * 1024
MIN_CLEAN_SIDE = 256
# Planted "small" files stay well under LAION's 5 KB.
MAX_SMALL_BYTES = 4500
# Sharpness and information floors the generator guarantees for every clean image.
MIN_CLEAN_LAPLACIAN = 150.0
MIN_CLEAN_ENTROPY = 4.0

FORMAT_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (the same file on every machine), so text renders identically."""
    return ImageFont.load_default(size=size)


def text_size(draw: ImageDraw.ImageDraw, text: str, size: int) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font(size))
    return right - left, bottom - top


def draw_text_centered(
    draw: ImageDraw.ImageDraw,
    center: tuple[float, float],
    text: str,
    size: int,
    fill: tuple[int, int, int],
) -> None:
    draw.text(center, text, font=font(size), fill=fill, anchor="mm")


def _apply(img: Image.Image, delta: np.ndarray) -> Image.Image:
    """Add an int16 (h, w) luminance delta to every channel, clipped to 0..255."""
    arr = np.asarray(img, dtype=np.int16)
    arr += delta[:, :, None]
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def add_noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Film-like luminance grain in cells of about 1/256 of the longest side, so it survives
    downscaling (images stay sharp by the Laplacian measure). Keeps files well above 5 KB and
    images far from near-uniform."""
    if sigma <= 0:
        return img
    w, h = img.size
    g = max(1, round(max(w, h) / 256))
    gw, gh = -(-w // g), -(-h // g)
    noise = rng.standard_normal((gh, gw), dtype=np.float32)
    noise *= np.float32(sigma)
    noise = np.clip(np.rint(noise), -127, 127).astype(np.int16)
    if g > 1:
        noise = np.repeat(np.repeat(noise, g, axis=0), g, axis=1)[:h, :w]
    return _apply(img, noise)


def smooth_field(rng: np.random.Generator, size: tuple[int, int], amplitude: float) -> np.ndarray:
    """A random low-frequency luminance field (h, w) in about [-amplitude, amplitude]: every image
    gets its own large-scale light pattern, so unrelated images do not share perceptual hashes."""
    w, h = size
    cells = int(rng.integers(3, 6))
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    grid /= max(float(np.abs(grid).max()), 1e-6)
    field = Image.fromarray(grid * np.float32(amplitude), "F").resize(
        (w, h), Image.Resampling.BICUBIC
    )
    return np.asarray(field, dtype=np.float32)


def add_field(img: Image.Image, rng: np.random.Generator, amplitude: float) -> Image.Image:
    return _apply(img, np.rint(smooth_field(rng, img.size, amplitude)).astype(np.int16))


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=3)
    elif fmt == "webp":
        img.convert("RGB").save(buf, "WEBP", quality=quality, method=4)
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def _gray_thumb(img: Image.Image, side: int = 256) -> np.ndarray:
    gray = img.convert("L")
    gray.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(gray)


def _laplacian_var(a: np.ndarray) -> float:
    a = a.astype(np.float32)
    lap = a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4.0 * a[1:-1, 1:-1]
    return float(lap.var(dtype=np.float64))


def _entropy(a: np.ndarray) -> float:
    hist = np.bincount(a.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def laplacian_variance(img: Image.Image, side: int = 256) -> float:
    """Blur measure: variance of the 4-neighbour Laplacian on a grayscale copy fit into side²."""
    return _laplacian_var(_gray_thumb(img, side))


def gray_entropy(img: Image.Image) -> float:
    """Shannon entropy (bits) of the grayscale histogram: near-uniform images score low."""
    return _entropy(_gray_thumb(img))


@dataclass(frozen=True)
class ImageCheck:
    """What the cleaning stage will measure, computed the same simple way for the demo's own use."""

    nbytes: int
    width: int
    height: int
    laplacian: float
    entropy: float

    @property
    def clean(self) -> bool:
        return (
            self.nbytes >= MIN_CLEAN_BYTES
            and min(self.width, self.height) >= MIN_CLEAN_SIDE
            and max(self.width, self.height) / min(self.width, self.height) <= 2.0
            and self.laplacian >= MIN_CLEAN_LAPLACIAN
            and self.entropy >= MIN_CLEAN_ENTROPY
        )


def check(data: bytes, img: Image.Image | None = None) -> ImageCheck:
    """Measure an encoded image; pass the image it was encoded from to skip decoding it again
    (the pixels of a quality-90 encode measure the same within a few percent)."""
    img = decode(data) if img is None else img
    thumb = _gray_thumb(img)
    return ImageCheck(
        nbytes=len(data),
        width=img.width,
        height=img.height,
        laplacian=_laplacian_var(thumb),
        entropy=_entropy(thumb),
    )


# --------------------------------------------------------------------------- near-dup transforms


def resize_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """0.5–0.8x, but never below the clean minimum side."""
    w, h = img.size
    low = max(0.5, MIN_CLEAN_SIDE / min(w, h))
    factor = float(rng.uniform(low, max(low, 0.8)))
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return img.resize(size, Image.Resampling.LANCZOS)


def crop_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Remove 10–20% of the area; each axis loses at most ~10.6%, split between its two sides."""
    w, h = img.size
    keep = float(rng.uniform(0.80, 0.90))
    kx = ky = keep**0.5
    new_w, new_h = round(w * kx), round(h * ky)
    x0 = int(rng.integers(0, w - new_w + 1))
    y0 = int(rng.integers(0, h - new_h + 1))
    return img.crop((x0, y0, x0 + new_w, y0 + new_h))


def flip_copy(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def jpeg_quality_for_copy(rng: np.random.Generator) -> int:
    return int(rng.integers(30, 61))


# --------------------------------------------------------------------------- broken files


def corrupt_bytes(rng: np.random.Generator) -> bytes:
    """Random bytes no decoder recognises, large enough not to trip the 5 KB rule instead."""
    while True:
        data = rng.bytes(int(rng.integers(9_000, 40_000)))
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except Exception:
            return data


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    """Cut a valid file at 40–70% of its length so a full decode fails."""
    low = min(0.70, max(0.40, MIN_CLEAN_BYTES / len(data)))  # stays above 5 KB when it can
    for _ in range(20):
        cut = data[: int(len(data) * float(rng.uniform(low, 0.70)))]
        try:
            with Image.open(io.BytesIO(cut)) as img:
                img.load()
        except Exception:
            return cut
    raise RuntimeError("could not produce an undecodable truncation")  # pragma: no cover


# --------------------------------------------------------------------------- watermarks

WATERMARK_TEXTS = (
    "© PixelVault", "SAMPLE", "© stockframe.example", "PREVIEW", "photo by lumen.example",
    "© 2024 Harborview Images", "DRAFT", "www.imagebank.example",
)  # fmt: skip
WATERMARK_OPACITIES = (0.5, 0.65, 0.8, 0.9)
WATERMARK_POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center", "tiled")


def _watermark_logo(side: int, rng: np.random.Generator) -> Image.Image:
    """A stock-agency style badge: a ring or rounded square with initials, white on clear."""
    logo = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(logo)
    width = max(2, side // 12)
    if rng.random() < 0.5:
        draw.ellipse([width, width, side - width, side - width], outline=255, width=width)
    else:
        draw.rounded_rectangle(
            [width, width, side - width, side - width], radius=side // 5, outline=255, width=width
        )
    letters = "".join(chr(int(rng.integers(65, 91))) for _ in range(2))
    draw.text((side / 2, side / 2), letters, font=font(max(8, side // 3)), fill=255, anchor="mm")
    return logo


def watermark(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """``img`` with a visible watermark overlaid the way stock sites mark previews: a text or a
    logo, white or black, at one of several opacities and positions (a corner, the centre, or
    tiled over the whole image). Returns the image and a description for the ground truth."""
    w, h = img.size
    short = min(w, h)
    kind = "logo" if rng.random() < 0.35 else "text"
    opacity = float(WATERMARK_OPACITIES[int(rng.integers(len(WATERMARK_OPACITIES)))])
    position = WATERMARK_POSITIONS[int(rng.integers(len(WATERMARK_POSITIONS)))]
    shade = 255 if rng.random() < 0.7 else 0
    big = position in ("center", "tiled")
    if kind == "logo":
        mark = _watermark_logo(int(short * (0.35 if big else rng.uniform(0.2, 0.28))), rng)
    else:
        text = WATERMARK_TEXTS[int(rng.integers(len(WATERMARK_TEXTS)))]
        size = int(short * (rng.uniform(0.1, 0.14) if big else rng.uniform(0.08, 0.11)))
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        tw, th = text_size(probe, text, size)
        mark = Image.new("L", (tw + size, th + size), 0)
        ImageDraw.Draw(mark).text(
            (mark.width / 2, mark.height / 2), text, font=font(size), fill=255, anchor="mm"
        )
        if mark.width > w * 0.9:
            mark = mark.resize((int(w * 0.9), max(1, int(mark.height * w * 0.9 / mark.width))))
    alpha = Image.new("L", (w, h), 0)
    margin = int(short * 0.04)
    spots = {
        "bottom_right": [(w - mark.width - margin, h - mark.height - margin)],
        "bottom_left": [(margin, h - mark.height - margin)],
        "top_right": [(w - mark.width - margin, margin)],
        "top_left": [(margin, margin)],
        "center": [((w - mark.width) // 2, (h - mark.height) // 2)],
        "tiled": [
            (x, y)
            for y in range(margin, h, mark.height * 3)
            for x in range(margin - (y // 3) % mark.width, w, int(mark.width * 1.6))
        ],
    }[position]
    for x, y in spots:
        alpha.paste(mark, (int(x), int(y)), mark)
    alpha = alpha.point(lambda v: int(v * opacity))
    layer = Image.new("RGB", (w, h), (shade, shade, shade))
    marked = Image.composite(layer, img.convert("RGB"), alpha)
    return marked, f"{kind}:{position}:{opacity:g}"
