"""The interleaved reader: OBELICS Parquet and MINT JSONL documents become raw rows in document
order, and every malformed document is a reject with its reason."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from fineharbor.core.mapping import map_batch
from fineharbor.core.schema import RAW_SCHEMA
from fineharbor.testing.documents import document, write_mint_jsonl, write_obelics_parquet
from fineharbor.testing.images import make_image_bytes
from fineharbor_tests.core.readers.helpers import make_source, read_whole, reasons


def _source(tmp_path, location, **fields):
    fields.setdefault("mapping", {})  # no text rule: the interleaved preset is filled in
    return make_source(
        tmp_path, name="docs", reader="interleaved", location=str(location), **fields
    )


def _unified(kept: list[dict], source) -> list[dict]:
    unified, rejected = map_batch(pa.Table.from_pylist(kept, schema=RAW_SCHEMA), source.mapping)
    assert rejected.num_rows == 0, rejected.to_pylist()
    return unified.to_pylist()


def test_obelics_parquet_keeps_document_order(tmp_path):
    a, b = make_image_bytes(1), make_image_bytes(2)
    rows = [
        document("d0", ["Intro.\n\n\nMore intro.", a, "Middle.", b, "End."]),
        document("d1", [b, "Only text after the image."]),
    ]
    path = write_obelics_parquet(tmp_path / "docs" / "part-0.parquet", rows)
    source = _source(tmp_path, path.parent, mapping={"origin_key": "id"})
    kept, rejected, _ = read_whole(source)
    assert rejected == []
    assert [r["origin_key"] for r in kept] == ["d0", "d1"]
    assert [im["bytes"] for im in kept[0]["images"]] == [a, b]
    record = json.loads(kept[0]["record"])
    assert record["texts"] == ["Intro.\n\n\nMore intro.", None, "Middle.", None, "End."]
    assert json.loads(record["metadata"]) == {"url": "https://example.org/d0"}

    first, second = _unified(kept, source)
    assert first["segments"] == [
        {"image": None, "text": "Intro.\nMore intro."},
        {"image": 0, "text": None},
        {"image": None, "text": "Middle."},
        {"image": 1, "text": None},
        {"image": None, "text": "End."},
    ]
    assert first["texts"] == [{"user": "", "assistant": "Intro.\nMore intro.\n\nMiddle.\n\nEnd."}]
    assert first["metadata"] == json.dumps({"url": "https://example.org/d0"})
    assert second["segments"][0] == {"image": 0, "text": None}


def test_malformed_obelics_rows_are_rejects(tmp_path):
    good = make_image_bytes(3)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("images", pa.list_(pa.binary())),
            ("texts", pa.list_(pa.string())),
            ("metadata", pa.string()),
        ]
    )
    rows = [
        {"id": "ok", "images": [good, None], "texts": [None, "caption"], "metadata": "{}"},
        {"id": "short", "images": [good], "texts": [None, "x"], "metadata": "{}"},
        {"id": "both", "images": [good, None], "texts": ["t", "x"], "metadata": "{}"},
        {"id": "allnull", "images": [None, None], "texts": [None, None], "metadata": "{}"},
        {"id": "nulls", "images": None, "texts": None, "metadata": "{}"},
        {"id": "badbytes", "images": [b"not an image at all"], "texts": [None], "metadata": None},
        {"id": "empty", "images": [b"", None], "texts": [None, "t"], "metadata": None},
    ]
    path = write_obelics_parquet(tmp_path / "d.parquet", rows, schema=schema)
    kept, rejected, _ = read_whole(_source(tmp_path, path, mapping={"origin_key": "id"}))
    assert [r["origin_key"] for r in kept] == ["ok"]
    assert reasons(rejected) == {
        "short": "document_misaligned",
        "both": "document_misaligned",
        "allnull": "empty_document",
        "nulls": "empty_document",
        "badbytes": "image_corrupt",
        "empty": "image_missing",
    }
    assert len(kept) + len(rejected) == len(rows)


def test_not_parquet_is_one_file_reject(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    kept, rejected, _ = read_whole(_source(tmp_path, tmp_path))
    assert kept == []
    assert reasons(rejected) == {"broken.parquet": "file_unreadable"}


def test_mint_jsonl_paths_urls_and_broken_lines(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "p.jpg").write_bytes(make_image_bytes(4))
    path = write_mint_jsonl(
        tmp_path / "mint.jsonl",
        [
            {"texts": ["Para one.", None], "images": [None, "images/p.jpg"], "metadata": {"a": 1}},
            {"texts": [None, "x"], "images": ["ftp://example.org/a.jpg", None]},
            {"texts": [None], "images": ["../outside.jpg"]},
            {"texts": ["a", "b"], "images": [None]},
        ],
    )
    with path.open("a") as f:
        f.write("{not json\n")
    kept, rejected, _ = read_whole(_source(tmp_path, path))
    assert [r["origin_key"] for r in kept] == ["mint.jsonl:0"]
    assert kept[0]["images"][0]["path"] == "images/p.jpg"
    assert reasons(rejected) == {
        "mint.jsonl:1": "download_invalid_url",  # URLs: test_interleaved_urls.py
        "mint.jsonl:2": "image_path_outside_root",
        "mint.jsonl:3": "document_misaligned",
        "mint.jsonl:4": "malformed_record",
    }
    (unified,) = _unified(kept, _source(tmp_path, path))
    assert unified["segments"] == [{"image": None, "text": "Para one."}, {"image": 0, "text": None}]
    assert json.loads(unified["metadata"]) == {"a": 1}


def test_interleaved_source_refuses_another_mapping(tmp_path):
    from fineharbor.core.config import ConfigError

    with pytest.raises(ConfigError, match="maps its documents itself"):
        _source(tmp_path, tmp_path, mapping={"caption": "txt"})
