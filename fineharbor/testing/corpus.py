"""A realistic hostile image folder, written on the fly for tests and benchmarks.

What users hand over rather than what a generator plants: one image in every format Pillow can
save (plus common variants: alpha, 16-bit, palette, animation, CMYK, compressed TIFF), files
renamed to the wrong suffix or to none, truncated and zero-byte files, a decompression bomb
(a small PNG declaring 100,000 x 100,000 pixels), non-image files (text, PDF, ZIP, HTML, a tar),
nested and hidden directories, names with spaces and non-ASCII letters, symlinks inside and
outside the root, a FIFO, and captions beside some images. :func:`write_captionless_folder`
writes a plain folder of images without any caption.

Every image is a noisy gradient of ``SIZE`` so it passes the cleaning stage's size, byte, blur
and entropy rules whenever its format is allowed. Files outside the root hold ``OUTSIDE_MARK``
so a test can assert that no outside byte entered a stage.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (320, 240)
OUTSIDE_MARK = b"FINEHARBOR-OUTSIDE-BYTES-0xDEADBEEF"
# Pillow names these formats but can only save them with an external handler or options
_NEEDS_HANDLER = {"BUFR", "GRIB", "HDF5", "WMF", "PDF"}
_PREFERRED_EXTENSION = {
    "JPEG": ".jpg",
    "PPM": ".ppm",
    "SGI": ".sgi",
    "EPS": ".eps",
    "TIFF": ".tiff",
    "SPIDER": ".spider",
    "MPO": ".mpo",
    "PALM": ".palm",
}


@dataclass
class HostileCorpus:
    """What was written: ``images`` maps each key holding a valid, decodable image to the
    format Pillow reads it as; ``entries`` counts every directory entry a reader sees (files,
    links, the FIFO, hidden entries as one each); ``sidecars`` the caption files that pair with
    an image."""

    root: Path
    outside: Path
    images: dict[str, str] = field(default_factory=dict)
    entries: int = 0
    sidecars: int = 0
    skipped_formats: dict[str, str] = field(default_factory=dict)

    def add(self, relative: str, payload: bytes, image_format: str | None = None) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        self.entries += 1
        if image_format is not None:
            self.images[relative] = image_format
        return path


def noisy_image(seed: int = 0, size: tuple[int, int] = SIZE) -> Image.Image:
    """A noisy RGB gradient: compressible like a photo, sharp enough for the blur rule."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y + seed * 37) % 256], axis=-1)
    noisy = base.astype(np.int16) + rng.integers(-24, 24, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _readable_format(payload: bytes) -> str | None:
    """The format Pillow decodes the bytes as, or None when it cannot (e.g. EPS without
    Ghostscript, PALM which Pillow writes but does not read)."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            return image.format
    except Exception:
        return None


def _every_saveable_format(corpus: HostileCorpus, image: Image.Image) -> None:
    """One file per format in Pillow's save registry, trying the modes formats commonly need."""
    Image.init()
    extensions: dict[str, str] = {}
    for extension, name in Image.registered_extensions().items():
        extensions.setdefault(name, extension)
    with warnings.catch_warnings():  # deprecation notices of formats Pillow will drop
        warnings.simplefilter("ignore")
        for index, name in enumerate(sorted(Image.SAVE)):
            _one_format(corpus, image, index, name, extensions)
    corpus.images = {k: v for k, v in corpus.images.items() if v is not None}


def _one_format(
    corpus: HostileCorpus, image: Image.Image, index: int, name: str, extensions: dict[str, str]
) -> None:
    if name in _NEEDS_HANDLER:
        corpus.skipped_formats[name] = "needs an external save handler"
        return
    error = "no mode accepted"
    for mode in ("RGB", "L", "P", "1"):
        try:
            payload = encode(image.convert(mode), name)
        except Exception as exc:  # formats reject modes and options in many ways
            error = f"{type(exc).__name__}: {exc}"
            continue
        extension = _PREFERRED_EXTENSION.get(name) or extensions.get(name, f".{name.lower()}")
        relative = f"formats/{index:02d}-{name.lower()}{extension}"
        corpus.add(relative, payload, _readable_format(payload))
        return
    corpus.skipped_formats[name] = error


def _variants(corpus: HostileCorpus, image: Image.Image) -> None:
    """Modes and encodings of the allowed formats that real collections hold."""
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(image.size))
    sixteen = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    frames = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100)
    variants = {
        "variants/alpha.png": (encode(rgba, "PNG"), "PNG"),
        "variants/gray16.png": (encode(sixteen, "PNG"), "PNG"),
        "variants/palette.png": (encode(image.convert("P"), "PNG"), "PNG"),
        "variants/animated.gif": (animated.getvalue(), "GIF"),
        "variants/cmyk.jpg": (encode(image.convert("CMYK"), "JPEG"), "JPEG"),
        "variants/progressive.jpg": (encode(image, "JPEG", progressive=True), "JPEG"),
        "variants/lossless.webp": (encode(image, "WEBP", lossless=True), "WEBP"),
        "variants/lzw.tif": (encode(image, "TIFF", compression="tiff_lzw"), "TIFF"),
        "variants/deflate.tif": (encode(image, "TIFF", compression="tiff_adobe_deflate"), "TIFF"),
        "variants/gray.pgm": (encode(image.convert("L"), "PPM"), "PPM"),
        "variants/bilevel.pbm": (encode(image.convert("1"), "PPM"), "PPM"),
        "variants/rle.tga": (encode(image, "TGA", compression="tga_rle"), "TGA"),
    }
    for relative, (payload, name) in variants.items():
        corpus.add(relative, payload, name)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG of a few hundred bytes that declares ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def _broken_and_renamed(corpus: HostileCorpus, image: Image.Image) -> None:
    png, jpeg = encode(image, "PNG"), encode(image, "JPEG", quality=90)
    corpus.add("renamed/png-named.jpg", png, "PNG")
    corpus.add("renamed/jpeg-without-extension", jpeg, "JPEG")
    corpus.add("renamed/photo.JPEG", jpeg, "JPEG")
    corpus.add("renamed/image.txt", png, "PNG")  # an image under a caption's suffix, alone
    corpus.add("broken/truncated.jpg", jpeg[: len(jpeg) // 2])
    corpus.add("broken/truncated.png", png[: len(png) // 3])
    corpus.add("broken/zero-bytes.png", b"")
    corpus.add("broken/garbage.jpg", os.urandom(2048))
    corpus.add("broken/bomb.png", bomb_png())


def _not_images(corpus: HostileCorpus) -> None:
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("inside.txt", "zipped text")
    corpus.add("other/notes.txt", b"a text file with no image beside it\n")
    corpus.add("other/document.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    corpus.add("other/archive.zip", zipped.getvalue())
    corpus.add("other/page.html", b"<!DOCTYPE html><html><body><img src=x.jpg></body></html>")
    corpus.add("other/data.json", b'{"caption": "a record with no image"}')
    corpus.add("other/binary.bin", bytes(range(256)) * 8)


def _names_and_captions(corpus: HostileCorpus, image: Image.Image) -> None:
    corpus.add("names/with space.png", encode(image, "PNG"), "PNG")
    corpus.add("names/café ☕ 写真.jpg", encode(image, "JPEG"), "JPEG")
    corpus.add("captioned/cat.jpg", encode(noisy_image(7), "JPEG"), "JPEG")
    corpus.add("captioned/cat.txt", b"a photo of a cat sleeping on a sofa near the window")
    corpus.add("captioned/dog.png", encode(noisy_image(8), "PNG"), "PNG")
    corpus.add("captioned/dog.json", b'{"caption": "a dog running across a green field"}')
    corpus.sidecars += 2
    corpus.add("deep/a/b/c/d/nested.webp", encode(image, "WEBP"), "WEBP")


def _hidden_links_and_fifo(corpus: HostileCorpus, image: Image.Image) -> None:
    corpus.add(".DS_Store", b"\x00\x00\x00\x01Bud1")
    corpus.add("names/.hidden.png", encode(image, "PNG"))
    (corpus.root / ".git" / "objects").mkdir(parents=True)
    (corpus.root / ".git" / "objects" / "blob").write_bytes(b"not read")
    corpus.entries += 1  # the hidden directory is one entry, its files are never read

    corpus.outside.mkdir(parents=True, exist_ok=True)
    secret = corpus.outside / "secret.txt"
    secret.write_bytes(OUTSIDE_MARK + b" outside text\n")
    outside_png = corpus.outside / "outside.png"
    outside_png.write_bytes(encode(image, "PNG") + OUTSIDE_MARK)
    (corpus.outside / "dir").mkdir(exist_ok=True)
    (corpus.outside / "dir" / "more.png").write_bytes(encode(image, "PNG") + OUTSIDE_MARK)

    links = corpus.root / "links"
    links.mkdir()
    for name, target in {
        "outside.png": outside_png,
        "passwd.png": Path("/etc/passwd"),
        "outside-dir": corpus.outside / "dir",
        "inside.png": corpus.root / "renamed" / "png-named.jpg",
        "dangling.jpg": corpus.root / "nowhere.jpg",
        "zero.png": Path("/dev/zero"),
    }.items():
        (links / name).symlink_to(target)
        corpus.entries += 1
    corpus.images["links/inside.png"] = "PNG"
    # a caption sidecar that leaks an outside file: its image must be rejected
    corpus.add("links/leaky.png", encode(image, "PNG"))
    (links / "leaky.txt").symlink_to(secret)
    corpus.entries += 1
    corpus.sidecars += 1
    if hasattr(os, "mkfifo"):
        os.mkfifo(links / "pipe.png")
        corpus.entries += 1


def write_hostile_corpus(root: Path, outside: Path) -> HostileCorpus:
    """Write the hostile folder under ``root`` (links point into ``outside`` too)."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = HostileCorpus(root=root, outside=outside)
    image = noisy_image()
    _every_saveable_format(corpus, image)
    _variants(corpus, image)
    _broken_and_renamed(corpus, image)
    _not_images(corpus)
    _names_and_captions(corpus, image)
    _hidden_links_and_fifo(corpus, image)
    return corpus


def write_captionless_folder(root: Path, count: int = 12) -> list[str]:
    """A plain folder of images without any caption (JPEG, PNG and WEBP in turn)."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name, fmt = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")][index % 3]
        names.append(f"img-{index:03d}.{name}")
        (root / names[-1]).write_bytes(encode(noisy_image(index), fmt))
    return names
