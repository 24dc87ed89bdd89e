"""Safe decoding: formats, modes, orientation, animation, resizing, bombs, broken files."""

from __future__ import annotations

import io
import resource
import warnings

import numpy as np
import pytest
from PIL import Image

from fineharbor.core.cleaning import images as images_module
from fineharbor.core.cleaning.images import (
    capture_c_stderr,
    clean_image,
    decode_image,
    sniff_format,
    target_size,
)
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import (
    DECOMPRESSION_BOMB,
    IMAGE_CORRUPT,
    IMAGE_FORMAT_NOT_ALLOWED,
    IMAGE_MISSING,
    IMAGE_TRUNCATED,
    TOO_MANY_PIXELS,
)
from fineharbor_tests.core.cleaning.helpers import encode, png_declaring, scene

P = CleanParams()


def rgb_of(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def test_exif_rotated_jpeg_comes_out_rotated():
    stored = Image.new("RGB", (300, 200), (255, 0, 0))
    stored.paste((0, 0, 255), (150, 0, 300, 200))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    result = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), P)
    assert result.ok
    out = rgb_of(result.data)
    assert out.size == (200, 300)
    assert (result.info.orig_width, result.info.orig_height) == (200, 300)
    top, bottom = out.getpixel((100, 40)), out.getpixel((100, 260))
    assert top[0] > 200 and top[2] < 60  # the stored left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    assert result.info.reencoded and "exif" not in Image.open(io.BytesIO(result.data)).info


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("cmyk_jpeg", lambda: encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG")),
        (
            "png16",
            lambda: encode(
                Image.fromarray(np.full((48, 64), 65535, dtype=np.uint16)).convert("I;16"), "PNG"
            ),
        ),
        ("rgba_png", lambda: encode(Image.new("RGBA", (64, 48), (255, 0, 0, 0)), "PNG")),
        ("la_png", lambda: encode(Image.new("LA", (64, 48), (10, 0)), "PNG")),
        ("palette_gif", lambda: encode(scene(64, 48).convert("P"), "GIF")),
        ("gray_jpeg", lambda: encode(Image.new("L", (64, 48), 128), "JPEG")),
        ("bilevel_bmp", lambda: encode(Image.new("1", (64, 48), 1), "BMP")),
        ("tiff", lambda: encode(scene(64, 48), "TIFF")),
        ("webp", lambda: encode(scene(64, 48), "WEBP")),
    ],
)
def test_modes_decode_to_rgb(name, make):
    result = decode_image(make(), P)
    assert result.ok, (name, result.reason, result.detail)
    out = rgb_of(result.data)
    assert out.mode == "RGB"
    assert out.size == (64, 48)
    assert result.info.width == 64 and result.info.height == 48


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535, 300]], dtype=np.uint16).repeat(4, axis=0)
    result = decode_image(encode(Image.fromarray(values).convert("I;16"), "PNG"), P)
    row = np.asarray(rgb_of(result.data))[0, :, 0]
    assert list(row) == [0, 128, 255, 1]


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (20, 0, 40, 40))  # right half fully transparent
    out = rgb_of(decode_image(encode(image, "PNG"), P).data)
    assert out.getpixel((5, 5)) == (255, 0, 0)
    assert out.getpixel((35, 5)) == (255, 255, 255)


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    result = decode_image(encode(image, "PNG", transparency=1), P)
    assert rgb_of(result.data).getpixel((3, 3)) == (255, 255, 255)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (50, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    result = decode_image(data, P)
    assert result.ok and result.info.animated
    assert result.info.encoded_format == "PNG"
    r, g, b = rgb_of(result.data).getpixel((10, 10))
    assert r > 200 and g < 50 and b < 50


def test_resize_longest_side_keeps_aspect():
    result = clean_image(encode(scene(3000, 1000, 1), "JPEG"), P)
    assert result.ok, result.detail
    info = result.info
    assert (info.orig_width, info.orig_height) == (3000, 1000)
    assert (info.width, info.height) == (2048, 683)
    assert info.resized and info.reencoded and info.encoded_format == "JPEG"
    assert rgb_of(result.data).size == (2048, 683)
    assert target_size((1000, 3000), 2048) == (683, 2048)


@pytest.mark.parametrize(("fmt", "encoded"), [("PNG", "PNG"), ("WEBP", "WEBP"), ("BMP", "PNG")])
def test_reencode_in_original_format_where_possible(fmt, encoded):
    small_side = CleanParams(max_image_side=256)  # same code path as 2048, smaller images
    result = decode_image(encode(scene(300, 130, 2), fmt), small_side)
    assert result.ok and result.info.encoded_format == encoded
    assert Image.open(io.BytesIO(result.data)).format == encoded
    assert (result.info.width, result.info.height) == (256, 111)


def test_unchanged_rgb_jpeg_keeps_its_bytes():
    data = encode(scene(900, 600, 3), "JPEG")
    result = clean_image(data, P)
    assert result.ok and not result.info.reencoded and result.data == data


def test_draft_verification_matches_full_decode_on_broken_jpegs():
    rng = np.random.default_rng(5)
    base = encode(scene(1600, 1200, 4), "JPEG")
    full = CleanParams(jpeg_draft=False)
    for i in range(20):
        data = bytearray(base)
        if i % 2:
            data = data[: int(rng.integers(1000, len(base) - 10))]
        else:
            for pos in rng.integers(600, len(base), 10):
                data[int(pos)] ^= 0xFF
        fast, slow = clean_image(bytes(data), P), clean_image(bytes(data), full)
        assert (fast.ok, fast.reason) == (slow.ok, slow.reason)


def test_declared_huge_png_is_a_bomb_without_allocating():
    data = png_declaring(100_000, 100_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = clean_image(data, P)
    assert result.reason == DECOMPRESSION_BOMB
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50  # 10^10 pixels would be 30 GB


def test_too_many_pixels_checked_from_header():
    params = CleanParams(max_pixels=1_000_000, decompression_bomb_pixels=50_000_000)
    result = clean_image(png_declaring(2000, 1000), params)
    assert result.reason == TOO_MANY_PIXELS
    assert "pixels 2000000 > 1000000" in result.detail
    assert clean_image(png_declaring(10_000, 10_000), params).reason == DECOMPRESSION_BOMB


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"),
        (b"\xc5\xd0\xd3\xc6" + b"\x00" * 64, "EPS"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF", "PDF"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"<svg width='10' height='10'></svg>", "SVG"),
        (b"\xd7\xcd\xc6\x9a" + b"\x00" * 64, "WMF"),
    ],
)
def test_formats_outside_the_allowlist_are_never_decoded(data, fmt):
    assert sniff_format(data) == fmt
    result = clean_image(data, P)
    assert result.reason == IMAGE_FORMAT_NOT_ALLOWED
    assert fmt in result.detail


def test_allowlist_is_configurable():
    data = encode(scene(300, 300), "GIF")
    result = decode_image(data, CleanParams(allowed_formats=["JPEG", "PNG"]))
    assert result.reason == IMAGE_FORMAT_NOT_ALLOWED


def test_eps_cannot_be_configured():
    with pytest.raises(ValueError):
        CleanParams(allowed_formats=["JPEG", "EPS"])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP"])
def test_truncated_files(fmt):
    data = encode(scene(400, 300, 7), fmt)
    result = decode_image(data[: len(data) * 2 // 3], P)
    assert not result.ok
    assert result.reason in (IMAGE_TRUNCATED, IMAGE_CORRUPT)
    if fmt in ("JPEG", "PNG", "WEBP"):
        assert result.reason == IMAGE_TRUNCATED, result.detail


def test_broken_png_data_is_never_accepted_as_blank():
    """A PNG whose pixel stream is broken must fail, also after header-level probing."""
    data = encode(scene(400, 300, 1), "PNG")
    idat = data.index(b"IDAT") + 4
    broken = data[:idat] + b"\xff" * 400 + data[idat + 400 :]
    assert clean_image(broken, P).reason == IMAGE_CORRUPT
    assert decode_image(broken, P).reason == IMAGE_CORRUPT


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_never_keeps_what_a_plain_full_decode_rejects(fmt):
    rng = np.random.default_rng(11)
    base = encode(scene(300, 200, 2), fmt)
    for _ in range(25):
        data = bytearray(base)
        for pos in rng.integers(16, len(base), int(rng.integers(1, 30))):
            data[int(pos)] ^= 1 << int(rng.integers(8))
        data = bytes(data)
        try:
            with Image.open(io.BytesIO(data)) as plain:
                plain.load()
                plain.convert("RGB")
            plain_ok = True
        except Exception:
            plain_ok = False
        if not plain_ok:
            assert not decode_image(data, P).ok


def test_missing_and_garbage():
    assert decode_image(b"", P).reason == IMAGE_MISSING
    assert decode_image(None, P).reason == IMAGE_MISSING
    assert decode_image(np.random.default_rng(0).bytes(20_000), P).reason == IMAGE_CORRUPT
    assert decode_image(b"<!DOCTYPE html><html>404</html>", P).reason == IMAGE_CORRUPT


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("TGA", {}),
        ("TGA", {"compression": "tga_rle"}),
        ("PCX", {}),
        ("SGI", {}),
        ("IM", {}),
        ("PPM", {}),
        ("QOI", {}),
        ("ICO", {}),
        ("JPEG2000", {}),
    ],
)
def test_valid_images_in_formats_outside_the_allowlist_are_named_not_corrupt(fmt, options):
    """Formats without magic bytes (TGA, PCX, IM...) are identified by Pillow's plugins; an
    uncompressed TGA, whose header looks like an icon directory, is not taken for a CUR."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IM is deprecated in Pillow
        data = encode(scene(300, 200), fmt, **options)
    result = clean_image(data, CleanParams(allowed_formats=["JPEG", "PNG"]))
    assert result.reason == IMAGE_FORMAT_NOT_ALLOWED
    assert f"format {fmt} not allowed" in result.detail
    assert clean_image(data, P).reason != "image_corrupt"  # IM: not allowed; the rest: kept


def test_headerless_bmp_is_decoded_when_bmp_is_allowed():
    data = encode(scene(300, 200), "DIB")
    assert clean_image(data, P).ok
    assert clean_image(data, CleanParams(allowed_formats=["JPEG"])).reason == (
        IMAGE_FORMAT_NOT_ALLOWED
    )


def test_decoder_messages_are_counted_not_printed(capfd):
    """libtiff writes warnings to file descriptor 2; in a decode worker they are counted."""
    base = encode(scene(300, 200), "TIFF", compression="tiff_lzw")
    first_entry = int.from_bytes(base[4:8], "little") + 2
    broken = bytearray(base)
    broken[first_entry + 4 : first_entry + 8] = b"\x07\x00\x00\x00"  # ImageWidth count 7
    clean_image(bytes(broken), P)
    assert "TIFF" in capfd.readouterr().err  # what a process without the capture prints
    capture_c_stderr()
    try:
        results = [clean_image(bytes(broken), P) for _ in range(3)]
    finally:
        images_module._capture.update(pid=None)
    assert capfd.readouterr().err == ""
    assert [result.reason for result in results] == [IMAGE_CORRUPT] * 3
    assert all(result.warnings >= 2 for result in results)
