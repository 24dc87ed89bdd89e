"""WebDataset shards as people write them, and every member accounted for."""

import gzip
import io
import json
import tarfile

from fineharbor.core.config import IngestParams
from fineharbor.core.readers.webdataset import split_member_name
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.core.readers.helpers import make_source, read_whole, reasons


def add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def add_link(archive: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    archive.addfile(info)


def shards(tmp_path, **fields):
    return make_source(
        tmp_path, reader="webdataset", location="wds", mapping={"caption": "txt"}, **fields
    )


def test_split_follows_webdataset():
    assert split_member_name("a.b/c.d/000.seg.jpg") == ("a.b/c.d/000", "seg.jpg")
    assert split_member_name("dir/x.TXT.gz") == ("dir/x", "txt.gz")
    assert split_member_name("dir.v1/noextension") is None


def test_members_decode_by_extension_like_webdataset(tmp_path):
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "shard-0.tgz", "w:gz") as archive:
        add(archive, "s.v1/000.bmp", make_image_bytes(1, fmt="BMP"))
        add(archive, "s.v1/000.txt.gz", gzip.compress(b"a gzipped caption"))
        add(archive, "s.v1/000.json.gz", gzip.compress(json.dumps({"k": 1}).encode()))
        add(archive, "s.v1/000.cls", b"7")
        add(archive, "s.v1/000.cls2", b" 12\n")
        add(archive, "s.v1/000.index", b"3")
        add(archive, "s.v1/000.pyd", b"\x80\x04never unpickled")
        add(archive, "s.v1/001.tiff", make_image_bytes(2, fmt="TIFF"))
        add(archive, "s.v1/001.en.txt", b"english caption")
        add(archive, "s.v1/002.txt", b"a sample without an image")
        add(archive, "s.v1/003.data", make_image_bytes(3, fmt="PNG"))  # an image by content
    kept, rejected, stats = read_whole(shards(tmp_path))
    assert rejected == []
    rows = {row["origin_key"]: row for row in kept}
    assert list(rows) == [f"shard-0.tgz/s.v1/00{i}" for i in range(4)]
    first = json.loads(rows["shard-0.tgz/s.v1/000"]["record"])
    assert first == {
        "txt": "a gzipped caption",
        "json": {"k": 1},
        "cls": 7,
        "cls2": 12,
        "index": 3,
        "pyd": {"$bytes": 17},
    }
    assert [i["path"] for i in rows["shard-0.tgz/s.v1/000"]["images"]] == ["bmp"]
    assert json.loads(rows["shard-0.tgz/s.v1/001"]["record"]) == {"en.txt": "english caption"}
    assert rows["shard-0.tgz/s.v1/002"]["images"] == []  # image-less, kept
    assert [i["path"] for i in rows["shard-0.tgz/s.v1/003"]["images"]] == ["data"]
    assert stats.members_seen == 11 and stats.files_seen == 1


def test_links_special_members_and_odd_names_are_rejects(tmp_path):
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "shard-0.tar", "w") as archive:
        add(archive, "__meta__", b"webdataset metadata")
        add(archive, "000.jpg", make_image_bytes(1))
        add(archive, "000.txt", b"kept caption")
        add_link(archive, "001.jpg", "/etc/passwd", tarfile.SYMTYPE)
        add(archive, "001.txt", b"caption of a linked image")
        add(archive, "002.txt", b"caption")
        add_link(archive, "002.jpg", "000.jpg", tarfile.LNKTYPE)
        add_link(archive, "003.jpg", "", tarfile.FIFOTYPE)
        add(archive, "README", b"no extension")
        add(archive, "004.txt", b"x" * 5000)
        add(archive, "005.txt.gz", gzip.compress(b"y" * 100_000))  # a small gzip bomb
        add(archive, "006.jpg", make_image_bytes(6))
        add(archive, "006.jpg", make_image_bytes(7))
    kept, rejected, stats = read_whole(shards(tmp_path), IngestParams(max_record_bytes=4096))
    assert [row["origin_key"] for row in kept] == ["shard-0.tar/000"]
    assert reasons(rejected) == {
        "shard-0.tar#__meta__": "unsupported_member",
        "shard-0.tar/001": "tar_link_member",
        "shard-0.tar/002": "tar_link_member",
        "shard-0.tar/003": "tar_special_member",
        "shard-0.tar#README": "unsupported_member",
        "shard-0.tar/004": "record_too_large",
        "shard-0.tar/005": "record_too_large",
        "shard-0.tar/006": "malformed_record",
    }
    assert stats.members_seen == 13


def test_a_bad_shard_is_one_reject_naming_it_and_the_others_are_read(tmp_path):
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "a.tar", "w") as archive:
        add(archive, "000.jpg", make_image_bytes(1))
        add(archive, "001.jpg", make_image_bytes(2))
    whole = (tmp_path / "wds" / "a.tar").read_bytes()
    # cut exactly after the first member: tarfile alone would see a complete archive
    first = 512 + ((len(make_image_bytes(1)) + 511) // 512) * 512
    (tmp_path / "wds" / "b.tar").write_bytes(whole[:first])
    (tmp_path / "wds" / "c.tar").write_bytes(b"not a tar at all" * 100)
    (tmp_path / "wds" / "d.tar.gz").write_bytes(gzip.compress(whole)[:300])
    (tmp_path / "wds" / "notes.md").write_text("shards of the demo")
    kept, rejected, stats = read_whole(shards(tmp_path))
    assert [row["origin_key"] for row in kept] == ["a.tar/000", "a.tar/001"]
    found = reasons(rejected)
    assert found == {
        "b.tar/*": "unreadable_shard",
        "c.tar/*": "unreadable_shard",
        "d.tar.gz/*": "unreadable_shard",
        "notes.md": "unsupported_file",
    }
    details = {r["origin_key"]: r["detail"] for r in rejected}
    assert str(tmp_path / "wds" / "b.tar") in details["b.tar/*"]
    assert "sample '000'" in details["b.tar/*"]
    assert stats.files_seen == 5
