"""Review pages: fixed sample, escaped text, rejects by reason, and a headless Chromium run
(renders, images show, no console errors, no injected markup)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.config import parse_config
from fineharbor.core.pipeline import CLEANED, RAW, UNIFIED
from fineharbor.core.review import pages
from fineharbor.core.review.decisions import Flag, ReviewLog, now
from fineharbor.core.review.pages import (
    ThumbnailWorker,
    render_review_page,
    sample_ids,
    thumbnail,
    write_review_pages,
)
from fineharbor.core.schema import RAW_SCHEMA, UNIFIED_SCHEMA, reject_row
from fineharbor.core.storage import Storage
from fineharbor_tests.conftest import make_image_bytes

HOSTILE_USER = "<script>document.title='pwned'</script> what is this?"
HOSTILE_ANSWER = '</div><h1 id="injected">x</h1><img src=x onerror="alert(1)">'
HOSTILE_DETAIL = "<b>bold</b> & <style>body{display:none}</style>"


def solid(colour: tuple[int, int, int], size: int = 400) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _row(index: int, images: list[bytes], user: str, assistant: str) -> dict:
    return {
        "sample_id": f"id{index:02d}",
        "source": "zoo",
        "origin_uri": None,
        "origin_key": f"k{index}",
        "images": [{"bytes": b, "path": None} for b in images],
        "texts": [{"user": user, "assistant": assistant}],
    }


@pytest.fixture
def zoo(tmp_path):
    """A source's raw, unified and cleaned partitions, with hostile text and a broken image."""
    storage = Storage(str(tmp_path / "home"))
    rows = [_row(0, [solid((255, 0, 0))], "What colour is it?", "Pure red.")]
    rows.append(_row(1, [solid((0, 0, 255), 64)], HOSTILE_USER, HOSTILE_ANSWER))
    rows.append(_row(2, [b"definitely not an image"], "broken?", "yes"))
    rows += [_row(i, [make_image_bytes(i)], f"question {i}", f"answer {i}") for i in range(3, 8)]
    raw = [
        {
            **{k: r[k] for k in ("sample_id", "source", "origin_uri", "origin_key", "images")},
            "record": json.dumps({"q": r["texts"][0]["user"]}),
        }
        for r in rows
    ]
    with storage.writer(RAW, "zoo", RAW_SCHEMA) as writer:
        writer.write(pa.Table.from_pylist(raw, schema=RAW_SCHEMA))
    with storage.writer(UNIFIED, "zoo", UNIFIED_SCHEMA) as writer:
        writer.write(pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA))
    with storage.writer(CLEANED, "zoo", UNIFIED_SCHEMA) as writer:
        writer.write(
            pa.Table.from_pylist(
                [r for r in rows if r["sample_id"] not in ("id02", "id07")], schema=UNIFIED_SCHEMA
            )
        )
        broken = reject_row("zoo", "k2", "image_corrupt", "cannot identify image file")
        unsafe = reject_row("zoo", "k7", "text_unsafe", HOSTILE_DETAIL)
        broken["sample_id"], unsafe["sample_id"] = "id02", "id07"
        writer.reject(pa.Table.from_pylist([broken, unsafe]))
    project = parse_config(
        {
            "sources": [
                {
                    "name": "zoo",
                    "reader": "json",
                    "location": "zoo.jsonl",
                    "mapping": {"question": "q", "answer": "a"},
                }
            ]
        },
        tmp_path,
    )
    reviews = ReviewLog().with_decision(
        "zoo", Flag(action="flag", by="ann", at=now(), sample_ids=["id03"], note="blurry")
    )
    return storage, project, reviews


def test_page_content_is_escaped_sampled_and_grouped(zoo):
    storage, project, reviews = zoo
    page = render_review_page(storage, project, reviews, "zoo", sample_size=20)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert 'id="injected"' not in page and "<img src=x" not in page
    assert "<style>body" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert (
        page.count('src="data:image/jpeg;base64,') == 7 + 6 + 1
    )  # unified, cleaned, rejects (one broken)
    assert page.count("rejected: image_corrupt (23 bytes)") == 2  # unified + its reject
    assert "image_corrupt: 1 rows" in page and "text_unsafe: 1 rows" in page
    assert "flagged by ann" in page and "unreviewed" in page
    assert "Content-Security-Policy" in page and "default-src &#x27;none&#x27;" not in page


def test_sample_is_fixed_by_seed(zoo):
    storage = zoo[0]
    five = sample_ids(storage, UNIFIED, "zoo", 5, seed=0)
    assert five == sample_ids(storage, UNIFIED, "zoo", 5, seed=0)
    assert sample_ids(storage, UNIFIED, "zoo", 3, seed=0) == five[:3]
    assert sample_ids(storage, UNIFIED, "zoo", 8, seed=1) != sample_ids(
        storage, UNIFIED, "zoo", 8, seed=0
    )
    assert sample_ids(storage, UNIFIED, "ghost", 5, seed=0) == []


class Elements(HTMLParser):
    """The elements of the DOM Chromium serialised: tag and attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.seen.append((tag, dict(attrs)))

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.seen if t == tag)


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    )


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_pages_render_in_headless_chromium(zoo, tmp_path):
    binary = _chromium()
    if binary is None:
        if os.environ.get("FINEHARBOR_E2E_REQUIRED"):
            pytest.fail("chromium is required (FINEHARBOR_E2E_REQUIRED) but not installed")
        pytest.skip("chromium not installed: the review pages' browser test needs it")
    storage, project, reviews = zoo
    (page,) = write_review_pages(storage, project, reviews)
    assert Path(page).parent == tmp_path / "home" / "review"
    assert (Path(page).parent / "index.html").exists()
    url = Path(page).as_uri()

    dom = _run_chromium(
        binary, tmp_path / "p1", "--enable-logging=stderr", "--v=0", "--dump-dom", url
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    html = dom.stdout
    tags = Elements()
    tags.feed(html)
    assert tags.count("script") == 0 and tags.count("h1") == 1
    assert not [a for _, a in tags.seen if a.get("id") == "injected" or "onerror" in a]
    images = [a["src"] for t, a in tags.seen if t == "img"]
    assert len(images) == 14 and all(src.startswith("data:image/jpeg;base64,") for src in images)
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt; what is this?" in html
    assert "<title>review: zoo</title>" in html  # the hostile script never ran

    shot = tmp_path / "shot.png"
    result = _run_chromium(
        binary, tmp_path / "p2", "--window-size=1280,5000", f"--screenshot={shot}", url
    )
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    red = int(((pixels[..., 0] > 220) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)).sum())
    assert red > 2 * 256 * 200  # the red image's thumbnails show (unified and cleaned)


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
    b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n"
)


def png_declaring(side: int) -> bytes:
    """A valid 1-bit grayscale PNG of side x side pixels, all black: a few KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_thumbnails_go_through_the_cleaning_decoder():
    """An EPS is never handed to Ghostscript, and a small PNG declaring 144 MP (under Pillow's
    own bomb error, 1.5 GB to decode in place) is refused from its header."""
    bomb = png_declaring(12_000)
    assert len(bomb) < 100_000
    with ThumbnailWorker(CleanParams()) as worker:
        eps = thumbnail(EPS, worker)
        big = thumbnail(bomb, worker)
        fine = thumbnail(solid((0, 255, 0), 600), worker)
    assert "<img" not in eps and "rejected: image_format_not_allowed" in eps
    assert "<img" not in big and "rejected: decompression_bomb" in big
    assert fine.startswith('<img alt="image" src="data:image/jpeg;base64,')
    shown = Image.open(io.BytesIO(base64.b64decode(fine.split("base64,")[1].split('"')[0])))
    assert shown.format == "JPEG" and max(shown.size) == pages.THUMBNAIL_PX


def _stuck_or_dying(data, params):
    if data == b"hang":
        time.sleep(3600)
    if data == b"crash":
        os._exit(1)
    return REAL_DECODE(data, params)


REAL_DECODE = pages.decode_image


def test_a_stuck_or_crashing_decoder_costs_one_thumbnail(monkeypatch):
    """The decoder runs in a child killed past decode_timeout_s; a crash is that image's only.
    (fork: the child inherits the patched decoder.)"""
    monkeypatch.setattr(pages, "decode_image", _stuck_or_dying)
    params = CleanParams(start_method="fork", decode_timeout_s=0.5)
    with ThumbnailWorker(params) as worker:
        shown = [thumbnail(data, worker) for data in (b"hang", b"crash", solid((9, 9, 9)))]
    assert "rejected: image_decode_timeout" in shown[0]
    assert "rejected: worker_crashed" in shown[1]
    assert shown[2].startswith("<img")
