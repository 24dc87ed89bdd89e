"""Safe image decoding: allowlisted formats, pixel limits before decoding, full decode, RGB.

Images come from the open web, so the order matters:

1. the format is identified from the magic bytes and checked against ``allowed_formats``; Pillow is
   then asked to try only those plugins (``Image.open(formats=...)``), so EPS/PS (Ghostscript),
   PDF, SVG and the rest are never handed to a decoder;
2. the declared pixel count (header only, nothing allocated) is checked against the
   decompression-bomb limit and ``max_pixels``; Pillow's own ``MAX_IMAGE_PIXELS`` is set to the
   same limit so its ``DecompressionBombError`` agrees;
3. the first frame is fully decoded (``load()``, exactly once: a failed load is never retried
   on the same object, which Pillow would answer with a blank image), EXIF orientation
   applied, palette / CMYK / 16-bit / alpha converted to RGB (alpha composited on white).
   JPEGs that will be kept byte for byte, or shrunk by 2x or more, are decoded with libjpeg's
   DCT scaling (``draft``): every entropy-coded block is still read, so truncation and
   corruption are caught exactly as by a full-size decode (tested), at a fraction of the cost;
4. the longest side is brought down to ``max_image_side`` with LANCZOS (reductions of 4x or more
   first box-reduce, like Pillow's ``thumbnail``) and the image is re-encoded
   in its original format where possible (JPEG q95, PNG, WEBP), otherwise PNG. An RGB
   JPEG/PNG/WEBP that needed no change keeps its original bytes.

Time limits are not enforced here (a decoder stuck in C cannot be interrupted from Python): the
process pool in :mod:`fineharbor.core.cleaning.pool` kills a worker whose image overruns
``decode_timeout_s``. Every failure is returned as an :class:`ImageResult` with a stable reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import os
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import (
    DECOMPRESSION_BOMB,
    IMAGE_CORRUPT,
    IMAGE_FORMAT_NOT_ALLOWED,
    IMAGE_MISSING,
    IMAGE_TRUNCATED,
    Reject,
)
from fineharbor.core.cleaning.rules import DECODED_RULES, HEADER_RULES, ImageFacts, image_reject
from fineharbor.core.signatures.hashing import decode_rgb

ORIENTATION_TAG = 0x0112
# Reductions of 4x or more first box-reduce by an integer factor, leaving at least 2x to LANCZOS
# (Pillow's own default for thumbnail(); close to a full LANCZOS and ~3x cheaper for a 9400 px
# -> 2048 px resize). Smaller factors, the common case, are resampled by LANCZOS alone.
REDUCING_GAP = 2.0
_SWAPS_SIDES = {5, 6, 7, 8}
# formats re-encoded as themselves; everything else (GIF, BMP, TIFF, ...) becomes PNG
_REENCODE_AS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageReject(Exception):
    """Raised inside the decode pipeline; carries a stable reason and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """What happened to one image. Sizes are as displayed (after EXIF orientation)."""

    orig_width: int
    orig_height: int
    width: int
    height: int
    format: str  # the source format as identified (JPEG, PNG, GIF, ...)
    animated: bool
    resized: bool
    reencoded: bool
    encoded_format: str  # the format of the stored bytes
    laplacian_var: float | None = None
    entropy: float | None = None

    def as_row(self) -> dict:
        return {
            "orig_width": self.orig_width,
            "orig_height": self.orig_height,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "animated": self.animated,
            "resized": self.resized,
            "reencoded": self.reencoded,
            "encoded_format": self.encoded_format,
            "laplacian_var": self.laplacian_var,
            "entropy": self.entropy,
        }


@dataclass(frozen=True)
class ImageResult:
    """Outcome of :func:`clean_image` / :func:`decode_image`: bytes + info, or a reason."""

    ok: bool
    data: bytes | None = None
    info: ImageInfo | None = None
    reason: str | None = None
    detail: str = ""
    extension: str | None = field(default=None)
    # Python warnings and C decoder lines (libtiff) while decoding: counted, never printed
    warnings: int = 0

    @classmethod
    def failed(cls, reason: str, detail: str) -> ImageResult:
        return cls(ok=False, reason=reason, detail=detail)


# --------------------------------------------------------------------------- format sniffing

# (magic prefix, offset, format). Formats Pillow cannot or must not decode are listed too so
# that they are reported as image_format_not_allowed rather than as corrupt data.
_MAGIC: list[tuple[bytes, int, str]] = [
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),
    (b"MM\x00+", 0, "TIFF"),
    (b"qoif", 0, "QOI"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"\x00\x00\x02\x00", 0, "CUR"),
    (b"%!PS", 0, "EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"%PDF", 0, "PDF"),
    (b"8BPS", 0, "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG2000"),
    (b"\xffO\xffQ", 0, "JPEG2000"),
    (b"\xd7\xcd\xc6\x9a", 0, "WMF"),
    (b"icns", 0, "ICNS"),
    (b"DDS ", 0, "DDS"),
    (b"SIMPLE  =", 0, "FITS"),
    (b"/* XPM */", 0, "XPM"),
    (b"#define", 0, "XBM"),
    (b"\x01\xda", 0, "SGI"),
    (b"FORM", 0, "IFF"),
    (b"\x00\x00\x00\x00 EMF", 36, "EMF"),
    (b" EMF", 40, "EMF"),
]


def sniff_format(data: bytes) -> str | None:
    """Identify the container from its magic bytes (None when unknown)."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        return "HEIF"
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            # an uncompressed TGA starts like an icon directory; an icon holds >= 1 image
            if name in ("ICO", "CUR") and head[4:6] == b"\x00\x00":
                continue
            return name
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "PPM"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<svg", b"<?xml")):
        return "SVG"
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    return None


def plugin_format(data: bytes) -> str | None:
    """The format any of Pillow's plugins recognises in the header (for formats without magic
    bytes: TGA, PCX, SGI...), or None. Header only: no pixel is decoded, no external program
    run (EPS needs Ghostscript only to load)."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.format or "unknown image"
    except Image.DecompressionBombError:
        return "unknown image (decompression bomb)"
    except Exception:  # hostile headers make plugins raise anything
        return None


def _allowed(name: str, params: CleanParams) -> bool:
    allowed = set(params.allowed_formats)
    if name in ("JPEG", "MPO"):
        return bool(allowed & {"JPEG", "MPO"})
    if name == "DIB":
        return bool(allowed & {"BMP", "DIB"})
    return name in allowed


def _looks_truncated(data: bytes, sniffed: str | None, error: BaseException) -> bool:
    message = str(error).lower()
    if isinstance(error, EOFError) or "truncated" in message or "premature end" in message:
        return True
    if sniffed == "WEBP" and len(data) >= 8:
        declared = struct.unpack("<I", data[4:8])[0] + 8
        return len(data) < declared
    if sniffed == "PNG":
        return b"IEND" not in data[-32:]
    if sniffed == "JPEG":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if sniffed == "GIF":
        return not data.endswith(b";")
    return False


def _classify(data: bytes, sniffed: str | None, error: BaseException) -> ImageReject:
    if isinstance(error, ImageReject):
        return error
    if isinstance(error, Image.DecompressionBombError):
        return ImageReject(DECOMPRESSION_BOMB, str(error)[:200])
    if isinstance(error, MemoryError):
        return ImageReject(DECOMPRESSION_BOMB, "decoder ran out of memory")
    name = type(error).__name__
    text = str(error).splitlines()[0][:160] if str(error) else ""
    if isinstance(error, UnidentifiedImageError):
        what = sniffed or "unknown"
        return ImageReject(IMAGE_CORRUPT, f"unrecognised image data (looks like {what})")
    if _looks_truncated(data, sniffed, error):
        return ImageReject(IMAGE_TRUNCATED, f"{name}: {text}" if text else name)
    return ImageReject(IMAGE_CORRUPT, f"{name}: {text}" if text else name)


# --------------------------------------------------------------------------- steps


@functools.lru_cache(maxsize=32)
def _open_formats(allowed: tuple[str, ...]) -> list[str]:
    """Pillow plugin ids to try. MPO files are produced by the JPEG plugin; DIB by BMP."""
    Image.init()
    wanted = set(allowed)
    if "MPO" in wanted:
        wanted.add("JPEG")
    if "DIB" in wanted:
        wanted.add("BMP")
    if "BMP" in wanted:  # a BMP without its file header (Windows clipboard, .dib files)
        wanted.add("DIB")
    return [name for name in Image.OPEN if name in wanted]


def open_image(data: bytes | None, params: CleanParams) -> tuple[ImageFile.ImageFile, str]:
    """Identify and open (header only). Raises :class:`ImageReject`.

    Checks the format allowlist before any plugin runs and the declared pixel count against the
    decompression-bomb limit before any pixel is allocated.
    """
    if not data:
        raise ImageReject(IMAGE_MISSING, "no image bytes")
    sniffed = sniff_format(data)
    if sniffed == "HTML":
        raise ImageReject(IMAGE_CORRUPT, "an HTML document, not an image")
    if sniffed is not None and not _allowed(sniffed, params):
        raise ImageReject(IMAGE_FORMAT_NOT_ALLOWED, f"format {sniffed} not allowed")
    # Pillow raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS.
    Image.MAX_IMAGE_PIXELS = max(1, params.decompression_bomb_pixels // 2)
    formats = _open_formats(tuple(params.allowed_formats))
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError as error:
        # not an allowed format; a valid image in another one is named, not called corrupt
        other = plugin_format(data)
        if other is not None:
            raise ImageReject(IMAGE_FORMAT_NOT_ALLOWED, f"format {other} not allowed") from None
        raise _classify(data, sniffed, error) from None
    except Exception as error:
        raise _classify(data, sniffed, error) from None
    fmt = image.format or sniffed or "unknown"
    if not _allowed(fmt, params):
        raise ImageReject(IMAGE_FORMAT_NOT_ALLOWED, f"format {fmt} not allowed")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageReject(IMAGE_CORRUPT, f"declared size {width}x{height}")
    if width * height > params.decompression_bomb_pixels:
        limit = params.decompression_bomb_pixels
        raise ImageReject(
            DECOMPRESSION_BOMB, f"declared {width}x{height} = {width * height} pixels > {limit}"
        )
    return image, fmt


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation 1-8 (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
        value = int(value)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def displayed_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    return displayed_size_of(image.size, orientation)


def displayed_size_of(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    width, height = size
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def is_animated(image: Image.Image, data: bytes, fmt: str) -> tuple[bool, Image.Image]:
    """Whether the file holds more than one frame, without decoding any frame.

    Returns the image to continue with: probing can disturb a plugin's frame state, so on an
    error the file is reopened at its first frame.
    """
    if fmt == "MPO":  # multi-picture JPEG (stereo / preview), not an animation
        return False, image
    try:
        return bool(getattr(image, "is_animated", False)), image
    except Exception:
        reopened = Image.open(io.BytesIO(data), formats=[image.format or fmt])
        return True, reopened


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    if image.mode == "F":
        array = np.nan_to_num(array.astype(np.float32))
        peak = float(array.max()) if array.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
    array = array.astype(np.int64, copy=False)
    peak = int(array.max()) if array.size else 0
    if peak <= 255:
        out = np.clip(array, 0, 255)
    elif peak <= 65535:
        out = np.clip(array, 0, 65535) >> 8
    else:
        out = np.clip(array, 0, None) * 255 // peak
    return Image.fromarray(out.astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """Convert any decoded mode to RGB; alpha is composited on white. Returns (rgb, converted)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image, False
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _sixteen_bit_to_l(image).convert("RGB"), True
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background, True
    return image.convert("RGB"), True


def target_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode(image: Image.Image, fmt: str, params: CleanParams) -> tuple[bytes, str]:
    """Encode in the original format where possible (JPEG q95, PNG, WEBP), otherwise PNG."""
    out_format = _REENCODE_AS.get(fmt, "PNG")
    buffer = io.BytesIO()
    if out_format == "JPEG":
        image.save(buffer, "JPEG", quality=params.jpeg_quality)
    elif out_format == "WEBP":
        image.save(buffer, "WEBP", quality=params.webp_quality)
    else:
        image.save(buffer, "PNG", compress_level=params.png_compress_level)
    return buffer.getvalue(), out_format


def gray_thumbnail(image: Image.Image, max_side: int) -> np.ndarray:
    """Grayscale uint8 array box-reduced to at most ``max_side`` (for blur and entropy).

    uint8, not float: the entropy histogram counts it as it is (no rounding pass), and the
    measures that need floats convert exact integer values."""
    factor = math.ceil(max(image.size) / max_side)
    small = image.reduce(factor) if factor > 1 else image
    return np.asarray(small.convert("L"))


# --------------------------------------------------------------------------- pipelines


def clean_image(data: bytes | None, params: CleanParams, *, pair: bool = False) -> ImageResult:
    """Decode, check, normalise and re-encode one image; never raises.

    ``pair`` marks an image-caption pair, for the rules whose scope is ``pairs``. The format and
    decompression-bomb checks and the ``header`` rules of
    :data:`~fineharbor.core.cleaning.rules.RULES` run on the header before decoding, its
    ``decoded`` rules (min side, aspect ratio, bytes, entropy, blur) after the full decode, in
    table order (so a broken file is always reported as broken, whatever its size).
    """
    return _safely(data, params, pair=pair, rules=True)


def decode_image(data: bytes | None, params: CleanParams) -> ImageResult:
    """Safe decode + RGB + resize + re-encode, without the size and quality rules."""
    return _safely(data, params, pair=False, rules=False)


def _safely(data: bytes | None, params: CleanParams, *, pair: bool, rules: bool) -> ImageResult:
    with warnings.catch_warnings(record=True) as caught, _c_stderr_counted() as c_messages:
        warnings.simplefilter("always")
        result = _decode_or_reject(data, params, pair=pair, rules=rules)
    count = len(caught) + c_messages()
    return dataclasses.replace(result, warnings=count) if count else result


def _decode_or_reject(
    data: bytes | None, params: CleanParams, *, pair: bool, rules: bool
) -> ImageResult:
    sniffed = None
    try:
        sniffed = sniff_format(data) if data else None
        return _clean_image(data, params, pair=pair, rules=rules)
    except ImageReject as reject:
        return ImageResult.failed(reject.reason, reject.detail)
    except Exception as error:  # any decoder failure on hostile input costs this image only
        reject = _classify(data or b"", sniffed, error)
        return ImageResult.failed(reject.reason, reject.detail)


# --------------------------------------------------------------------------- decoder messages

# libtiff (and a few other C decoders) print warnings straight to file descriptor 2: hundreds
# of lines on a real TIFF collection. Decode worker processes redirect it per image and count
# the lines instead; the Dagster process never does (other threads write to stderr there).
_capture: dict[str, int | None] = {"pid": None, "fd": None}


def capture_c_stderr() -> None:
    """Count, not print, C-level decoder messages in this process (call once in a worker)."""
    fd, path = tempfile.mkstemp(prefix="fineharbor-decoder-")
    os.unlink(path)  # an anonymous file: nothing to clean up when the worker is killed
    _capture.update(pid=os.getpid(), fd=fd)


@contextlib.contextmanager
def _c_stderr_counted() -> Iterator[Callable[[], int]]:
    sink = _capture["fd"] if _capture["pid"] == os.getpid() else None
    if sink is None:
        yield lambda: 0
        return
    os.ftruncate(sink, 0)
    os.lseek(sink, 0, os.SEEK_SET)
    saved = os.dup(2)
    os.dup2(sink, 2)
    try:
        yield lambda: _lines_in(sink)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _lines_in(sink: int) -> int:
    text = os.pread(sink, 1 << 16, 0)
    return text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)


def _raise(reject: Reject | None) -> None:
    if reject is not None:
        raise ImageReject(reject.reason, reject.detail)


def _clean_image(
    data: bytes | None, params: CleanParams, *, pair: bool, rules: bool
) -> ImageResult:
    image, fmt = open_image(data, params)
    assert data is not None  # open_image rejects missing bytes
    stored = image.size
    facts = ImageFacts(stored, len(data), pair=pair)
    if rules:  # before decoding: nothing of the pixel data is allocated yet
        _raise(image_reject(HEADER_RULES, facts, params))

    # Only JPEG's EXIF is parsed with the header. Other plugins (PNG) may *decode* the image to
    # find it, and a failed decode there must not be swallowed, so they are asked after load().
    jpeg = fmt in ("JPEG", "MPO")
    header_orientation = exif_orientation(image) if jpeg else 1
    animated, image = is_animated(image, data, fmt)
    expected = displayed_size(image, header_orientation)
    expected_final = target_size(expected, params.max_image_side) if params.resize else expected
    may_keep = (
        not params.reencode_unchanged
        and fmt in ("JPEG", "PNG", "WEBP")
        and not animated
        and expected_final == expected
        and header_orientation == 1
        and image.mode == "RGB"
        and "transparency" not in image.info
    )
    drafted = False
    if jpeg and params.jpeg_draft:
        # libjpeg DCT scaling: every entropy-coded block is still decoded (truncation and
        # corruption are detected as with a full decode); only the inverse DCT is smaller.
        # Kept-as-is images only need the quality thumbnail; resized ones at least the target.
        scale = (params.quality_max_side if may_keep else max(expected_final)) / max(expected)
        if scale <= 0.5:
            request = (max(1, math.ceil(stored[0] * scale)), max(1, math.ceil(stored[1] * scale)))
            image.draft(image.mode, request)
            drafted = image.size != stored

    image.load()  # the full decode; any failure propagates (never retried on this object)
    orientation = exif_orientation(image)
    transposed = orientation != 1
    if transposed:
        image = ImageOps.exif_transpose(image)
    # Displayed size: from the header when decoded at a reduced scale, else as decoded (some
    # plugins, e.g. TIFF, apply the orientation themselves while loading).
    orig = displayed_size_of(stored, orientation) if drafted else image.size
    final = target_size(orig, params.max_image_side) if params.resize else orig
    rgb, converted = to_rgb(image)
    keep_bytes = may_keep and not (transposed or converted) and final == orig
    if drafted and not keep_bytes and max(rgb.size) < max(final):
        # decoded at a reduced scale for an image that turned out to need re-encoding
        full = params.model_copy(update={"jpeg_draft": False})
        return _clean_image(data, full, pair=pair, rules=rules)

    lap = ent = None
    if rules:
        # After the decode on purpose: a broken file is reported as corrupt/truncated whatever
        # its size, and a file under the byte or side limit is cheap to decode anyway.
        # The pixel hash is defined on the full decode (as image_signatures computes it): a
        # reduced-scale or alpha-composited image is decoded once more, only when a blocklist
        # asks for it.
        exact = not (drafted or converted)
        facts.decoded(
            orig,
            functools.partial(gray_thumbnail, rgb, params.quality_max_side),
            rgb=rgb,
            full_rgb=None if exact else functools.partial(decode_rgb, data),
        )
        _raise(image_reject(DECODED_RULES, facts, params))
        if params.check_entropy or params.check_blur:  # recorded in image_info either way
            ent, lap = facts.entropy, facts.laplacian

    if not keep_bytes and rgb.size != final:
        rgb = rgb.resize(final, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    if keep_bytes:
        out, out_format = data, fmt
        width, height = orig
    else:
        out, out_format = encode(rgb, fmt, params)
        width, height = rgb.size
    info = ImageInfo(
        orig_width=orig[0],
        orig_height=orig[1],
        width=width,
        height=height,
        format=fmt,
        animated=animated,
        resized=(width, height) != orig,
        reencoded=not keep_bytes,
        encoded_format=out_format,
        laplacian_var=lap,
        entropy=ent,
    )
    return ImageResult(ok=True, data=out, info=info, extension=_EXTENSIONS.get(out_format))
