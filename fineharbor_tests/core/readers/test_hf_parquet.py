"""Hostile Parquet and `datasets` sources: a bad row is a reject, a bad file is one reject naming
it, and the other rows and files are read."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineharbor.core.readers import SourceLocationError
from fineharbor.core.schema import IMAGE_TYPE
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.core.readers.helpers import make_source, read_whole


def write_rows(path, captions, images=None):
    images = images or [
        {"bytes": make_image_bytes(i), "path": f"{i}.jpg"} for i in range(len(captions))
    ]
    table = pa.table(
        {"caption": pa.array(captions, pa.string()), "image": pa.array(images, IMAGE_TYPE)}
    )
    pq.write_table(table, path)


def test_truncated_and_fake_parquet_files_are_one_reject_each(tmp_path):
    (tmp_path / "data").mkdir()
    write_rows(tmp_path / "data" / "a.parquet", ["one", "two"])
    write_rows(tmp_path / "data" / "b.parquet", ["three", "four"])
    whole = (tmp_path / "data" / "b.parquet").read_bytes()
    (tmp_path / "data" / "b.parquet").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "data" / "c.parquet").write_bytes(b"PAR1 not really")
    write_rows(tmp_path / "data" / "d.parquet", ["five"])
    src = make_source(
        tmp_path, reader="hf_parquet", location="data", mapping={"caption": "caption"}
    )
    kept, rejected, _ = read_whole(src)
    assert [k["origin_key"] for k in kept] == ["a.parquet:0", "a.parquet:1", "d.parquet:0"]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [
        ("b.parquet", "file_unreadable"),
        ("c.parquet", "file_unreadable"),
    ]
    assert all(str(tmp_path / "data") in r["detail"] for r in rejected)


def test_a_string_cell_that_is_not_utf8_costs_its_row(tmp_path):
    raw = pa.array([b"fine", b"\xff\xfe broken", b"also fine"], pa.binary())
    images = [{"bytes": make_image_bytes(i), "path": f"{i}.jpg"} for i in range(3)]
    table = pa.table({"caption": raw.view(pa.string()), "image": pa.array(images, IMAGE_TYPE)})
    pq.write_table(table, tmp_path / "a.parquet")
    src = make_source(
        tmp_path, reader="hf_parquet", location="a.parquet", mapping={"caption": "caption"}
    )
    kept, rejected, _ = read_whole(src)
    assert [k["origin_key"] for k in kept] == ["a.parquet:0", "a.parquet:2"]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [
        ("a.parquet:1", "malformed_record")
    ]
    assert "not UTF-8" in rejected[0]["detail"]


def test_image_cells_by_path_missing_or_with_a_nul_byte_are_rejects(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.jpg").write_bytes(make_image_bytes(3))
    images = [
        {"bytes": None, "path": "img/ok.jpg"},
        {"bytes": None, "path": "img/missing.jpg"},
        {"bytes": None, "path": "img/ok.jpg\x00.png"},
        {"bytes": None, "path": None},
    ]
    write_rows(tmp_path / "a.parquet", ["a", "b", "c", "d"], images)
    src = make_source(
        tmp_path, reader="hf_parquet", location="a.parquet", mapping={"caption": "caption"}
    )
    kept, rejected, _ = read_whole(src)
    assert [k["origin_key"] for k in kept] == ["a.parquet:0"]
    assert kept[0]["images"][0]["bytes"] == make_image_bytes(3)
    assert {r["origin_key"]: r["reason"] for r in rejected} == {
        "a.parquet:1": "image_missing",
        "a.parquet:2": "image_path_invalid",
        "a.parquet:3": "image_missing",
    }
    assert len(kept) + len(rejected) == 4  # rows in = kept + rejected


def test_hf_dataset_bad_file_is_one_reject_naming_it(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"caption": "one"}) + "\n")
    deep = '{"caption": ' + "[" * 3000 + "]" * 3000 + "}"
    (tmp_path / "b.jsonl").write_text(json.dumps({"caption": "two"}) + "\n" + deep + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"caption": "three"}) + "\n")
    src = make_source(
        tmp_path,
        reader="hf_dataset",
        location="json",
        data_files=[str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "c.jsonl")],
        mapping={"caption": "caption"},
    )
    kept, rejected, _ = read_whole(src)
    captions = [json.loads(k["record"])["caption"] for k in kept]
    assert "one" in captions and "three" in captions
    assert [r["reason"] for r in rejected] == ["file_unreadable"]
    assert "b.jsonl" in rejected[0]["detail"]


def test_a_corrupt_page_keeps_the_rows_before_it_and_names_the_rest(tmp_path):
    captions = [f"caption number {i} " * 20 for i in range(3000)]
    pa_table = pa.table({"caption": captions})
    pq.write_table(pa_table, tmp_path / "a.parquet", row_group_size=1000)
    column = pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(1).column(0)
    payload = bytearray((tmp_path / "a.parquet").read_bytes())
    start = column.data_page_offset + 20
    payload[start : start + column.total_compressed_size - 40] = b"\xab" * (
        column.total_compressed_size - 40
    )
    (tmp_path / "a.parquet").write_bytes(bytes(payload))
    src = make_source(
        tmp_path,
        reader="hf_parquet",
        location="a.parquet",
        batch_size=1000,
        mapping={"caption": "caption"},
    )
    kept, rejected, _ = read_whole(src)
    assert len(kept) == 1000
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [("a.parquet", "file_unreadable")]
    assert "rows 1000 to 2999 of 3000 not read" in rejected[0]["detail"]


def test_hf_dataset_whose_first_file_cannot_be_typed_fails_in_one_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"caption": ' + "[" * 3000 + "]" * 3000 + "}\n")
    src = make_source(
        tmp_path,
        reader="hf_dataset",
        location="json",
        data_files=[str(tmp_path / "a.jsonl")],
        mapping={"caption": "caption"},
    )
    with pytest.raises(SourceLocationError, match=r"load_dataset.*RecursionError") as caught:
        read_whole(src)
    assert "\n" not in str(caught.value)
