"""Image hash blocklists: a list made from some generated images' hashes removes exactly those
samples (byte, pixel and phash entries, re-encoded copies by phash), names the list and never
the image, and a bad list fails at config load."""

from __future__ import annotations

from pathlib import Path

import pytest

from fineharbor.core.cleaning import blocklist
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.stage import process_row
from fineharbor.core.config import ConfigError, parse_config
from fineharbor.core.signatures.hashing import decode_rgb, image_hashes, sha256_bytes
from fineharbor.testing.rules import check_rule, sample_row
from fineharbor_tests.core.cleaning.helpers import ENGLISH, encode, scene


def caption_pair(image: bytes, caption: str = ENGLISH[0]) -> dict:
    return sample_row([("", caption)], [image])


def hashes(data: bytes):
    return image_hashes(decode_rgb(data))


def write_list(path: Path, lines: list[str]) -> str:
    path.write_text("# known-bad images\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    pictures = [scene(640, 480, seed) for seed in range(10, 16)]
    return {
        "by_bytes": encode(pictures[0], "JPEG"),
        "by_pixels": encode(pictures[1], "PNG", compress_level=9),
        "by_phash": encode(pictures[2], "JPEG", quality=95),
        "by_phash_hex": encode(pictures[3], "PNG"),
        "clean_a": encode(pictures[4], "JPEG"),
        "clean_b": encode(pictures[5], "PNG"),
    }


@pytest.fixture(scope="module")
def copies(images) -> dict[str, bytes]:
    """What the sources hold: the listed images, or copies whose bytes differ."""
    by_pixels = decode_rgb(images["by_pixels"])
    by_phash = decode_rgb(images["by_phash"])
    return {
        **images,
        # a lossless re-encode: other bytes, the same pixels
        "by_pixels": encode(by_pixels, "PNG", compress_level=1),
        # cropped by 2.5%, resized and re-encoded lossily: other bytes and pixels, a phash
        # 2 bits away
        "by_phash": encode(
            by_phash.crop((16, 12, 624, 468)).resize((560, 420)), "JPEG", quality=70
        ),
    }


def test_a_blocklist_of_generated_images_removes_exactly_those(tmp_path, images, copies):
    assert copies["by_pixels"] != images["by_pixels"]
    assert copies["by_phash"] != images["by_phash"]
    listed = write_list(
        tmp_path / "known_bad.txt",
        [
            f"sha256 {sha256_bytes(images['by_bytes'])}",
            f"sha256_pixels {hashes(images['by_pixels']).sha256_pixels}",
            f"phash {hashes(images['by_phash']).phash}",  # signed int64, as image_signatures
            f"PHASH {hashes(images['by_phash_hex']).phash & (2**64 - 1):016X}  # hex",
        ],
    )
    params = CleanParams(blocklists=[listed], check_language=False)
    outcome = {}
    for name, data in copies.items():
        kept, rejected = process_row(caption_pair(data), params)
        outcome[name] = None if kept is not None else (rejected["reason"], rejected["detail"])
    assert outcome == {
        "by_bytes": (
            "blocklisted_image",
            "sha256 of the file bytes on blocklist known_bad.txt (line 3)",
        ),
        "by_pixels": (
            "blocklisted_image",
            "sha256 of the decoded pixels on blocklist known_bad.txt (line 4)",
        ),
        "by_phash": (
            "blocklisted_image",
            "phash 2 bits <= 4 from blocklist known_bad.txt (line 5)",
        ),
        "by_phash_hex": (
            "blocklisted_image",
            "phash 0 bits <= 4 from blocklist known_bad.txt (line 6)",
        ),
        "clean_a": None,
        "clean_b": None,
    }
    closer = params.model_copy(update={"blocklist_phash_distance": 1})
    assert process_row(caption_pair(copies["by_phash"]), closer)[0] is not None


def test_the_pixel_hash_is_the_full_decode_also_for_draft_decoded_jpegs(tmp_path):
    """A large JPEG kept byte for byte is verified by a reduced-scale decode; its pixel hash
    still matches the image_signatures definition (the full decode)."""
    data = encode(scene(1400, 1000, 21), "JPEG")
    listed = write_list(tmp_path / "l.txt", [f"sha256_pixels {hashes(data).sha256_pixels}"])
    kept, reason, detail = check_rule("blocklisted_image", caption_pair(data), blocklists=[listed])
    assert (kept, reason) == (False, "blocklisted_image") and "decoded pixels" in detail


def test_a_blocklisted_image_is_named_first_and_never_in_the_detail(tmp_path, images):
    data = images["by_bytes"]
    listed = write_list(tmp_path / "csam.txt", [f"sha256 {sha256_bytes(data)}"])
    # the sample fails text rules too: the blocklist is what the ledger records
    sample = sample_row([("", "nsfw")], [images["clean_a"], data])
    _, rejected = process_row(sample, CleanParams(blocklists=[listed]))
    assert rejected["reason"] == "blocklisted_image"
    assert rejected["detail"] == "image 1: sha256 of the file bytes on blocklist csam.txt (line 3)"
    assert sha256_bytes(data) not in str(rejected)
    image_only = sample_row([], [data])
    assert check_rule("blocklisted_image", image_only, blocklists=[listed])[1] == (
        "blocklisted_image"
    )
    assert check_rule("blocklisted_image", image_only, check_blocklist=False)[0]


def test_blocklists_resolve_against_the_project_file_and_bad_ones_fail_at_load(tmp_path):
    (tmp_path / "lists").mkdir()
    good = write_list(tmp_path / "lists" / "ok.txt", ["phash 0123456789abcdef"])
    config = parse_config(
        {"sources": [], "stages": {"clean": {"blocklists": ["lists/ok.txt"]}}}, tmp_path
    )
    assert config.stages.clean.blocklists == [good]

    with pytest.raises(ConfigError, match=r"stages\.clean\.blocklists.*missing\.txt"):
        parse_config(
            {"sources": [], "stages": {"clean": {"blocklists": ["missing.txt"]}}}, tmp_path
        )
    (tmp_path / "bad.txt").write_text("sha256 abc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.txt, line 1: a sha256 is 64 hex digits"):
        parse_config({"sources": [], "stages": {"clean": {"blocklists": ["bad.txt"]}}}, tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("md5 d41d8cd98f00b204e9800998ecf8427e", "expected 'KIND HASH'"),
        ("phash 12345", None),
        ("phash xyz", "a phash is 16 hex digits or a signed 64-bit integer"),
        ("phash 99999999999999999999", "a phash is 16 hex digits"),
        ("sha256_pixels " + "0" * 64 + " extra", "expected 'KIND HASH'"),
    ],
)
def test_blocklist_lines(line, message):
    if message is None:
        assert len(blocklist.parse(line, "l.txt").phash) == 1
    else:
        with pytest.raises(blocklist.BlocklistError, match=message):
            blocklist.parse(line, "l.txt")


def test_phash_matching_takes_the_closest_entry_within_the_distance():
    listed = blocklist.parse("phash 0000000000000000\nphash 00000000000000ff\n", "l.txt")
    assert listed.phash_match(0b111, 4) == (1, 3)
    assert listed.phash_match(0xFE, 4) == (2, 1)
    assert listed.phash_match(0xF0F0, 4) is None
    assert listed.phash_match(-1, 64) is not None  # a negative int64 is the same 64 bits


def test_worker_processes_read_the_lists(tmp_path, images):
    """The stage's pool path: lists are read in each worker, rows conserved."""
    import pyarrow as pa

    from fineharbor.core.cleaning.stage import clean_batches

    listed = write_list(tmp_path / "l.txt", [f"sha256 {sha256_bytes(images['clean_b'])}"])
    params = CleanParams(blocklists=[listed], check_language=False, processes=1)
    batch = pa.Table.from_pylist([caption_pair(images["clean_a"]), caption_pair(images["clean_b"])])
    ((kept, rejected),) = list(clean_batches([batch], params))
    assert kept.num_rows == 1 and rejected.column("reason").to_pylist() == ["blocklisted_image"]
