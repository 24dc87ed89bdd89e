"""The hostile image folder of `fineharbor.testing.corpus` through the reader and cleaning."""

import threading
from pathlib import Path

import pytest

from fineharbor.core.cleaning.params import SAFE_FORMATS, CleanParams
from fineharbor.core.cleaning.stage import process_row
from fineharbor.core.config import parse_config
from fineharbor.core.ingest import build_raw_samples
from fineharbor.core.storage import Storage
from fineharbor.testing.corpus import OUTSIDE_MARK, write_captionless_folder, write_hostile_corpus
from fineharbor_tests.core.readers.helpers import make_source, read_whole, reasons

ALLOWED = set(SAFE_FORMATS)  # the default allowed_formats


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    corpus = write_hostile_corpus(base / "corpus", base / "outside")
    src = make_source(base, reader="image_folder", location="corpus")
    result: dict = {}
    # the corpus holds a FIFO: a reader that opened it for a blocking read would never return
    worker = threading.Thread(target=lambda: result.update(read=read_whole(src)), daemon=True)
    worker.start()
    worker.join(300)
    assert not worker.is_alive(), "the reader hung on the hostile folder"
    return corpus, *result["read"]


def test_every_entry_is_a_row_a_reject_or_a_sidecar(hostile):
    corpus, kept, rejected, stats = hostile
    assert stats.files_seen == corpus.entries
    assert stats.sidecars == corpus.sidecars
    assert corpus.entries == len(kept) + len(rejected) + corpus.sidecars
    assert len({r["origin_key"] for r in kept + rejected}) == len(kept) + len(rejected)


def test_images_are_found_by_content_whatever_their_name(hostile):
    corpus, kept, _, _ = hostile
    rows = {row["origin_key"] for row in kept}
    assert set(corpus.images) <= rows
    assert len(corpus.images) >= 40  # one per format Pillow saves and reads, plus variants
    for key in ("renamed/png-named.jpg", "renamed/jpeg-without-extension", "renamed/image.txt"):
        assert key in rows
    captioned = {
        row["origin_key"]: row["record"] for row in kept if "captioned/" in row["origin_key"]
    }
    assert "a photo of a cat" in captioned["captioned/cat.jpg"]
    assert "a dog running" in captioned["captioned/dog.png"]


def test_what_is_not_read_says_why(hostile):
    _, _, rejected, _ = hostile
    found = reasons(rejected)
    assert {key: found[key] for key in found if key.startswith(("links/", "other/", "."))} == {
        ".DS_Store": "hidden_file",
        ".git": "hidden_file",
        "links/outside.png": "path_outside_source",
        "links/passwd.png": "path_outside_source",
        "links/outside-dir": "path_outside_source",
        "links/zero.png": "path_outside_source",
        "links/leaky.png": "path_outside_source",  # its caption links outside
        "links/dangling.jpg": "image_missing",
        "links/pipe.png": "not_regular_file",
        "other/notes.txt": "unsupported_file",
        "other/document.pdf": "unsupported_file",
        "other/archive.zip": "unsupported_file",
        "other/page.html": "unsupported_file",
        "other/data.json": "unsupported_file",
        "other/binary.bin": "unsupported_file",
    }
    details = {r["origin_key"]: r["detail"] for r in rejected}
    assert "extension .zip, content ZIP" in details["other/archive.zip"]
    assert "extension .pdf, content PDF" in details["other/document.pdf"]
    assert found["broken/zero-bytes.png"] == "unsupported_file"
    assert found["names/.hidden.png"] == "hidden_file"


def test_no_outside_byte_enters(hostile):
    _, kept, _, _ = hostile
    passwd = Path("/etc/passwd").read_bytes()[:64]
    for row in kept:
        assert OUTSIDE_MARK.decode() not in row["record"]
        for image in row["images"]:
            assert OUTSIDE_MARK not in image["bytes"]
            assert passwd not in image["bytes"]


def test_allowed_images_pass_cleaning_and_the_others_are_named(hostile):
    """Through the cleaning row processor: every valid image in an allowed format is kept;
    a valid image in another format is image_format_not_allowed, never image_corrupt."""
    corpus, kept, _, _ = hostile
    params = CleanParams(check_language=False)
    outcomes = {}
    for row in kept:
        unified = {
            "sample_id": row["sample_id"],
            "source": "s",
            "origin_uri": row["origin_uri"],
            "origin_key": row["origin_key"],
            "images": row["images"],
            "texts": [{"user": "", "assistant": "a photo of a colourful test pattern on a wall"}],
        }
        keep, reject = process_row(unified, params)
        outcomes[row["origin_key"]] = "kept" if keep else reject["reason"]
    valid = corpus.images
    allowed = [key for key, fmt in valid.items() if fmt in ALLOWED]
    assert {key: outcomes[key] for key in allowed} == {key: "kept" for key in allowed}
    others = {key: outcomes[key] for key, fmt in valid.items() if fmt not in ALLOWED}
    assert set(others.values()) == {"image_format_not_allowed"}
    assert len(allowed) >= 35
    assert outcomes["broken/bomb.png"] == "decompression_bomb"
    assert outcomes["broken/truncated.png"] == "image_truncated"
    assert outcomes["formats/06-eps.eps"] == "image_format_not_allowed"  # never Ghostscript


def test_a_folder_of_images_without_captions_is_a_normal_source(tmp_path):
    names = write_captionless_folder(tmp_path / "pool", count=9)
    src = make_source(tmp_path, reader="image_folder", location="pool")
    kept, rejected, stats = read_whole(src)
    assert rejected == []
    assert [row["origin_key"] for row in kept] == names
    assert all(row["record"] == f'{{"file": "{row["origin_key"]}"}}' for row in kept)
    assert stats.files_seen == 9 and stats.sidecars == 0


def test_raw_samples_metadata_states_files_seen(tmp_path):
    write_captionless_folder(tmp_path / "pool", count=3)
    (tmp_path / "pool" / "img-000.txt").write_text("a caption for the first image")
    (tmp_path / "pool" / "readme.md").write_text("not an image")
    raw = {
        "sources": [
            {
                "name": "pool",
                "reader": "image_folder",
                "location": "pool",
                "mapping": {"caption": "txt"},
            }
        ]
    }
    config = parse_config(raw, tmp_path)
    report = build_raw_samples(config, "pool", Storage(str(tmp_path / "home")))
    assert (report.kept, report.rejected, report.reasons) == (3, 1, {"unsupported_file": 1})
    assert report.extra == {"files_seen": 5, "sidecars": 1}


def test_a_damaged_image_keeps_its_caption_and_is_named_by_cleaning(tmp_path):
    """A `.jpg` whose bytes are no known format is a damaged image, not an unsupported file:
    one row with its sidecar, which cleaning rejects as image_corrupt (one record, one outcome)."""
    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(bytes(range(256)) * 8)
    (folder / "x.txt").write_text("a red bus parked on a quiet street at night")
    (folder / "notes.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    src = make_source(tmp_path, reader="image_folder", location="pool")
    kept, rejected, stats = read_whole(src)
    assert stats.files_seen == 3 and stats.sidecars == 1
    assert [row["origin_key"] for row in kept] == ["x.jpg"]
    assert '"txt": "a red bus' in kept[0]["record"]
    assert reasons(rejected) == {"notes.zip": "unsupported_file"}
    caption = "a red bus parked on a quiet street at night"
    unified = {**kept[0], "source": "s", "texts": [{"user": "", "assistant": caption}]}
    _, reject = process_row(unified, CleanParams(check_language=False))
    assert reject["reason"] == "image_corrupt"
