"""Issue 17: no byte from outside a source, no hang on FIFOs or devices, every read bounded."""

import os
import threading
from pathlib import Path

import pytest

from fineharbor.core.config import IngestParams
from fineharbor.core.readers.common import ImageFetchError, read_local_image
from fineharbor.core.readers.files import read_bounded
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.core.readers.helpers import make_source, read_whole, reasons

SECRET = b"outside secret bytes"


@pytest.fixture
def tree(tmp_path):
    """`src/` with one good image; `outside/` with a secret text and an image."""
    (tmp_path / "src").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "src" / "good.jpg").write_bytes(make_image_bytes(1))
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside" / "photo.jpg").write_bytes(make_image_bytes(2) + SECRET)
    return tmp_path


def folder(tmp_path, **fields):
    return make_source(tmp_path, reader="image_folder", location="src", **fields)


def test_a_symlink_out_of_the_source_is_refused_unless_allowed(tree):
    (tree / "src" / "linked.jpg").symlink_to(tree / "outside" / "photo.jpg")
    kept, rejected, _ = read_whole(folder(tree))
    assert [row["origin_key"] for row in kept] == ["good.jpg"]
    assert reasons(rejected) == {"linked.jpg": "path_outside_source"}
    kept, rejected, _ = read_whole(folder(tree, follow_symlinks=True))
    assert [row["origin_key"] for row in kept] == ["good.jpg", "linked.jpg"]
    assert rejected == []


def test_a_symlinked_caption_leaking_a_file_rejects_its_sample(tree):
    (tree / "src" / "good.txt").symlink_to(tree / "outside" / "secret.txt")
    kept, rejected, stats = read_whole(folder(tree))
    assert kept == []
    assert reasons(rejected) == {"good.jpg": "path_outside_source"}
    assert "sidecar good.txt" in rejected[0]["detail"]
    assert stats.files_seen == 2 and stats.sidecars == 1


def test_a_caption_linked_to_dev_zero_is_never_read(tree):
    (tree / "src" / "good.txt").symlink_to("/dev/zero")
    _, rejected, _ = read_whole(folder(tree))
    assert reasons(rejected) == {"good.jpg": "path_outside_source"}
    _, rejected, _ = read_whole(folder(tree, follow_symlinks=True))
    assert reasons(rejected) == {"good.jpg": "not_regular_file"}
    assert "device" in rejected[0]["detail"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_as_image_or_caption_do_not_hang(tree):
    os.mkfifo(tree / "src" / "good.txt")
    os.mkfifo(tree / "src" / "pipe.jpg")
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=read_whole(folder(tree))), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "a FIFO was opened for a blocking read"
    kept, rejected, _ = result["r"]
    assert kept == []
    assert reasons(rejected) == {"good.jpg": "not_regular_file", "pipe.jpg": "not_regular_file"}
    # the check is on the opened descriptor, so a path swapped for a FIFO after listing is
    # refused as well
    with pytest.raises(ImageFetchError, match="FIFO") as error:
        read_bounded(str(tree / "src" / "pipe.jpg"), "pipe.jpg", 1024)
    assert error.value.reason == "not_regular_file"


def test_sidecars_over_max_record_bytes_are_rejected_unread(tree):
    (tree / "src" / "good.txt").write_bytes(b"x" * 5000)
    params = IngestParams(max_record_bytes=4096)
    _, rejected, _ = read_whole(folder(tree), params)
    assert reasons(rejected) == {"good.jpg": "record_too_large"}
    assert "5000 bytes > 4096" in rejected[0]["detail"]


def test_images_over_max_image_bytes_are_rejected_unread(tree):
    (tree / "src" / "big.png").write_bytes(make_image_bytes(3, size=(900, 900), fmt="PNG"))
    params = IngestParams(max_image_bytes=200_000)
    kept, rejected, _ = read_whole(folder(tree), params)
    assert [row["origin_key"] for row in kept] == ["good.jpg"]
    assert reasons(rejected) == {"big.png": "image_file_too_large"}


def test_read_local_image_refuses_nul_links_out_fifos_and_large_files(tree):
    root = tree / "src"
    (root / "out.jpg").symlink_to(tree / "outside" / "photo.jpg")
    os.mkfifo(root / "fifo.jpg")
    cases = {
        "bad\x00name.jpg": "path_invalid",
        "../outside/photo.jpg": "image_path_outside_root",
        "out.jpg": "path_outside_source",
        "fifo.jpg": "not_regular_file",
        "missing.jpg": "image_missing",
    }
    for reference, reason in cases.items():
        with pytest.raises(ImageFetchError) as error:
            read_local_image(root, reference, 10_000_000)
        assert error.value.reason == reason, reference
    with pytest.raises(ImageFetchError) as error:
        read_local_image(root, "good.jpg", 1024)
    assert error.value.reason == "image_file_too_large"
    linked = read_local_image(root, "out.jpg", 10_000_000, follow_symlinks=True)
    assert linked["bytes"] == Path(tree / "outside" / "photo.jpg").read_bytes()
    assert read_local_image(root, "good.jpg", 10_000_000)["path"] == "good.jpg"


def test_symlinked_directories_are_not_read_twice_nor_out_of_the_source(tree):
    (tree / "src" / "sub").mkdir()
    (tree / "src" / "sub" / "inner.jpg").write_bytes(make_image_bytes(4))
    (tree / "src" / "again").symlink_to(tree / "src" / "sub")
    (tree / "src" / "away").symlink_to(tree / "outside")
    kept, rejected, stats = read_whole(folder(tree))
    assert [row["origin_key"] for row in kept] == ["good.jpg", "sub/inner.jpg"]
    assert reasons(rejected) == {"again": "symlinked_directory", "away": "path_outside_source"}
    assert stats.files_seen == 4


def test_bad_sidecars_reject_their_sample_only(tree):
    (tree / "src" / "deep.jpg").write_bytes(make_image_bytes(5))
    (tree / "src" / "deep.json").write_text("[" * 3000 + "]" * 3000)
    (tree / "src" / "latin.jpg").write_bytes(make_image_bytes(6))
    (tree / "src" / "latin.txt").write_bytes(b"caf\xe9")
    kept, rejected, _ = read_whole(folder(tree))
    assert [row["origin_key"] for row in kept] == ["good.jpg"]
    assert reasons(rejected) == {"deep.jpg": "malformed_record", "latin.jpg": "malformed_record"}
