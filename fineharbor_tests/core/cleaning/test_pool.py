"""clean_batches in worker processes: hostile files, stalled and crashing decoders, order."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from fineharbor.core.cleaning import CLEANED_SCHEMA, REASONS, clean_batch, clean_batches
from fineharbor.core.cleaning.pool import cleaning_pool
from fineharbor_tests.core.cleaning.helpers import (
    CRASH_MARKER,
    ENGLISH,
    STALL_MARKER,
    batch,
    crashing_decoder,
    encode,
    fast_params,
    png_declaring,
    row,
    scene,
    stalling_decoder,
)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _tiff_declaring(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),  # ImageWidth LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HHI", tag, kind, count)
        packed += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def _gif(width: int, height: int, frames: int) -> bytes:
    head = b"GIF89a" + struct.pack("<HH", width, height) + b"\x80\x00\x00"
    head += b"\x00\x00\x00\xff\xff\xff"  # 2-colour global palette
    frame = b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1)
    frame += b"\x00\x02\x02\x44\x01\x00"
    return head + frame * frames + b";"


def hostile_corpus(folder: Path) -> dict[str, str | None]:
    """Write ~45 malformed, hostile and a few valid files; returns {name: expected reason}
    (None: any known outcome is fine, "keep": must be kept)."""
    rng = random.Random(1234)
    bases = {fmt: encode(scene(400, 300, i), fmt) for i, fmt in enumerate(
        ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])}  # fmt: skip
    files: dict[str, tuple[bytes, str | None]] = {}
    for fmt, data in bases.items():
        files[f"truncated.{fmt.lower()}"] = (data[: len(data) // 2], None)
    files["truncated.jpeg"] = (bases["JPEG"][: len(bases["JPEG"]) // 2], "image_truncated")
    files["header_only.jpg"] = (bases["JPEG"][:300], None)
    files["random_10k.bin"] = (np.random.default_rng(1).bytes(10_000), "image_corrupt")
    files["random_50.bin"] = (np.random.default_rng(2).bytes(50), "image_corrupt")
    files["zero_length.jpg"] = (b"", "image_missing")
    files["zeros.png"] = (b"\x00" * 10_000, "image_corrupt")
    files["image.eps"] = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "image_format_not_allowed",
    )
    files["dos.eps"] = (
        b"\xc5\xd0\xd3\xc6" + b"\x20\x00\x00\x00" * 8 + b"%!PS",
        "image_format_not_allowed",
    )
    files["drawing.svg"] = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        "image_format_not_allowed",
    )
    files["doc.pdf"] = (
        b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
        "image_format_not_allowed",
    )
    files["error.html"] = (
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "image_corrupt",
    )
    files["layers.psd"] = (b"8BPS\x00\x01" + b"\x00" * 200, "image_corrupt")  # allowed, broken
    files["wavelet.jp2"] = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 200, None)
    files["metafile.wmf"] = (b"\xd7\xcd\xc6\x9a" + b"\x00" * 200, "image_format_not_allowed")
    files["huge_declared.png"] = (png_declaring(100_000, 100_000), "decompression_bomb")
    files["too_many_pixels.png"] = (png_declaring(10_000, 9_000), "too_many_pixels")
    files["bomb.tiff"] = (_tiff_declaring(100_000, 100_000), "decompression_bomb")
    files["huge_screen.gif"] = (_gif(65_535, 65_535, 1), "decompression_bomb")
    files["many_frames.gif"] = (_gif(1, 1, 100_000), None)
    bad_crc = bytearray(bases["PNG"])
    bad_crc[29] ^= 0xFF  # inside the IHDR CRC
    files["bad_crc.png"] = (bytes(bad_crc), None)
    idat = bases["PNG"].index(b"IDAT")
    broken_zlib = bases["PNG"][: idat + 4] + b"\xff" * 400 + bases["PNG"][idat + 404 :]
    files["broken_zlib.png"] = (broken_zlib, None)
    ztxt = _png_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"\x00" * 30_000_000, 9))
    files["ztxt_bomb.png"] = (bases["PNG"][:33] + ztxt + bases["PNG"][33:], None)
    riff = bytearray(bases["WEBP"])
    riff[4:8] = struct.pack("<I", len(riff) * 4)
    files["lying_riff.webp"] = (bytes(riff), None)
    flat = Image.new("RGB", (6000, 6000), (0, 0, 0))
    files["deflate_bomb.png"] = (encode(flat, "PNG", compress_level=9), None)
    files["trailing_garbage.jpg"] = (bases["JPEG"] + np.random.default_rng(3).bytes(200_000), None)
    for i in range(14):  # seeded bit-flip fuzzing over valid files
        fmt = list(bases)[i % len(bases)]
        data = bytearray(bases[fmt])
        for _ in range(rng.randint(1, 40)):
            pos = rng.randrange(16, len(data))
            data[pos] ^= 1 << rng.randrange(8)
        if i % 4 == 3:
            data = data[: rng.randrange(32, len(data))]
        files[f"fuzz_{i:02d}.{fmt.lower()}"] = (bytes(data), None)
    for fmt in ("JPEG", "PNG", "WEBP"):
        files[f"valid.{fmt.lower()}"] = (encode(scene(640, 480, 40 + len(fmt)), fmt), "keep")
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def test_hostile_corpus_every_file_accounted_for(tmp_path):
    expected = hostile_corpus(tmp_path / "hostile")
    names = sorted(expected)
    assert len(names) >= 40
    rows = [
        row(name, [(tmp_path / "hostile" / name).read_bytes()], ENGLISH[i % len(ENGLISH)])
        for i, name in enumerate(names)
    ]
    batches = [batch(rows[i : i + 8]) for i in range(0, len(rows), 8)]
    results = list(clean_batches(batches, fast_params(processes=2, decode_timeout_s=20)))
    assert len(results) == len(batches)
    kept = [k for k, _ in results]
    rejected = pa.concat_tables([r for _, r in results]).to_pylist()
    kept_keys = [key for table in kept for key in table.column("origin_key").to_pylist()]
    rejected_keys = [r["origin_key"] for r in rejected]
    assert sorted(kept_keys + rejected_keys) == names  # each file exactly once
    assert all(table.schema == CLEANED_SCHEMA for table in kept)
    reasons = {r["origin_key"]: r["reason"] for r in rejected}
    assert set(reasons.values()) <= REASONS
    for name, want in expected.items():
        if want == "keep":
            assert name in kept_keys, (name, reasons.get(name))
        elif want is not None:
            assert reasons.get(name) == want, (name, reasons.get(name))


def _rows_with_marker(marker: bytes, n: int = 6, bad: int = 2) -> list[dict]:
    rows = []
    for i in range(n):
        data = encode(scene(500, 400, 60 + i), "JPEG")
        if i == bad:
            data += marker  # JPEG decoders ignore trailing bytes
        rows.append(row(f"r{i}", [data], ENGLISH[i % len(ENGLISH)]))
    return rows


def test_stalling_decoder_is_cut_off():
    rows = _rows_with_marker(STALL_MARKER)
    params = fast_params(processes=2, decode_timeout_s=1.5)
    results = list(
        clean_batches([batch(rows[:3]), batch(rows[3:])], params, decoder=stalling_decoder)
    )
    kept = [k for table, _ in results for k in table.column("origin_key").to_pylist()]
    rejected = [r for _, table in results for r in table.to_pylist()]
    assert kept == ["r0", "r1", "r3", "r4", "r5"]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [("r2", "image_decode_timeout")]
    assert "> 1.5 s" in rejected[0]["detail"]


def test_crashing_decoder_costs_one_row_and_order_is_kept():
    rows = _rows_with_marker(CRASH_MARKER, n=40, bad=21)
    params = fast_params(processes=2, check_language=False)
    results = list(
        clean_batches([batch(rows[:30]), batch(rows[30:])], params, decoder=crashing_decoder)
    )
    kept = [k for table, _ in results for k in table.column("origin_key").to_pylist()]
    assert kept == [f"r{i}" for i in range(40) if i != 21]
    rejected = [r for _, table in results for r in table.to_pylist()]
    assert len(rejected) == 1 and rejected[0]["reason"] == "image_corrupt"
    assert "SIGSEGV" in rejected[0]["detail"]


def test_consumer_can_stop_early_and_pool_is_reusable():
    rows = [row(f"k{i}", [encode(scene(300, 300, i), "JPEG")], ENGLISH[0]) for i in range(4)]
    params = fast_params(processes=2, check_language=False)
    with cleaning_pool(params) as pool:
        stream = pool.map(batch(rows[i : i + 1]) for i in range(4))
        first_kept, _ = next(stream)
        stream.close()
        assert first_kept.column("origin_key").to_pylist() == ["k0"]
        again = [k.num_rows for k, _ in pool.map([batch(rows), batch([])])]
        assert again == [4, 0]


def test_worker_processes_give_the_rows_cleaning_in_process_gives():
    images = [encode(scene(300, 200, i), fmt) for i, fmt in enumerate(["JPEG", "PNG", "WEBP"])]
    rows = [
        row("kept", [images[0]], ENGLISH[1]),
        row("tiny", [encode(scene(20, 20, 5), "PNG")], ENGLISH[2]),
        row("two", [images[1], images[2]], ENGLISH[3]),
        row("broken", [b"not an image at all"], ENGLISH[0]),
        row("empty_text", [images[2]], ""),
    ]
    params = fast_params(processes=2)
    batches = [batch(rows[:2]), batch(rows[2:]), batch([])]
    pooled = list(clean_batches(batches, params))
    here = [clean_batch(b, params) for b in batches]
    assert [k.to_pylist() for k, _ in pooled] == [k.to_pylist() for k, _ in here]
    assert [r.to_pylist() for _, r in pooled] == [r.to_pylist() for _, r in here]
    assert sum(r.num_rows for _, r in here) >= 2  # rejects compared, not only kept rows
