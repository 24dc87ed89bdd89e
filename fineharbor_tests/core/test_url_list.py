"""URL lists with bad lines: each bad line or file is a reject and the reader goes on."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineharbor.core.config import IngestParams, parse_config
from fineharbor.core.readers import read_source
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.core.test_download_store import LoopbackServer

PARAMS = IngestParams(download={"retries": 0, "timeout_s": 5})


@pytest.fixture
def server(tmp_path) -> Iterator[LoopbackServer]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "ok.jpg").write_bytes(make_image_bytes(1))
    served = LoopbackServer(root)
    served.start()
    yield served
    served.stop()


def read(tmp_path, location: str) -> tuple[list[dict], list[dict]]:
    source = parse_config(
        {
            "sources": [
                {
                    "name": "web",
                    "reader": "url_list",
                    "location": location,
                    "allow_private_addresses": True,
                    "mapping": {"preset": "laion"},
                }
            ]
        },
        tmp_path,
    ).sources[0]
    kept, rejected = [], []
    for k, r in read_source(source, PARAMS):
        kept += k.to_pylist()
        rejected += r.to_pylist()
    return kept, rejected


def test_jsonl_lines_that_are_not_objects_are_rejects(tmp_path, server):
    good = json.dumps({"url": server.url("ok.jpg"), "caption": "a cat"}).encode()
    lines = [good, b"5", b"null", b"[1, 2]", b'{"url": "\xff\xfe"}', b"[" * 3000, b"{", good]
    (tmp_path / "urls.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    kept, rejected = read(tmp_path, "urls.jsonl")
    assert [k["origin_key"] for k in kept] == ["urls.jsonl:0", "urls.jsonl:7"]
    reasons = {r["origin_key"]: (r["reason"], r["detail"]) for r in rejected}
    assert {key: reason for key, (reason, _) in reasons.items()} == {
        "urls.jsonl:1": "malformed_record",
        "urls.jsonl:2": "malformed_record",
        "urls.jsonl:3": "malformed_record",
        "urls.jsonl:4": "malformed_record",
        "urls.jsonl:5": "record_too_deep",
        "urls.jsonl:6": "malformed_record",
    }
    assert reasons["urls.jsonl:1"][1].startswith("line 2 ")
    assert "got int" in reasons["urls.jsonl:1"][1]
    assert "invalid UTF-8" in reasons["urls.jsonl:4"][1]


def test_csv_rows_with_extra_fields_or_bad_utf8_are_rejects(tmp_path, server):
    url = server.url("ok.jpg")
    text = f"url,caption\n{url},one\n{url}?2,two,extra\n".encode()
    text += f"{url}?3,thr".encode() + b"\xff" + f"ee\n{url}?4,four\n".encode()
    (tmp_path / "urls.csv").write_bytes(text)
    kept, rejected = read(tmp_path, "urls.csv")
    assert sorted(json.loads(k["record"])["caption"] for k in kept) == ["four", "one"]
    details = {r["detail"].split(":")[0]: r["detail"] for r in rejected}
    assert [r["reason"] for r in rejected] == ["malformed_record"] * 2
    assert "3 fields where the header has 2" in details["row 3"]
    assert "column 'caption' is not UTF-8" in details["row 4"]


def test_an_unreadable_file_is_one_reject_and_the_next_file_is_read(tmp_path, server):
    (tmp_path / "lists").mkdir()
    table = pa.table({"url": [server.url("ok.jpg")] * 3, "caption": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "lists" / "a.parquet")
    pq.write_table(table, tmp_path / "lists" / "b.parquet")
    broken = (tmp_path / "lists" / "a.parquet").read_bytes()
    (tmp_path / "lists" / "a.parquet").write_bytes(broken[: len(broken) // 2])
    kept, rejected = read(tmp_path, "lists")
    assert [k["origin_key"] for k in kept] == ["b.parquet:0", "b.parquet:1", "b.parquet:2"]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [
        ("a.parquet:0", "file_unreadable")
    ]
    assert "a.parquet" in rejected[0]["detail"]


def test_a_list_file_that_is_a_fifo_is_refused_not_opened(tmp_path, server):
    (tmp_path / "lists").mkdir()
    pq.write_table(pa.table({"url": [server.url("ok.jpg")]}), tmp_path / "lists" / "a.parquet")
    os.mkfifo(tmp_path / "lists" / "b.jsonl")  # opening it to read would wait forever
    kept, rejected = read(tmp_path, "lists")
    assert [k["origin_key"] for k in kept] == ["a.parquet:0"]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [("b.jsonl", "file_unreadable")]


def test_a_jsonl_line_over_max_record_bytes_is_skipped_unread(tmp_path, server):
    good = json.dumps({"url": server.url("ok.jpg"), "caption": "a cat"}).encode()
    huge = json.dumps({"url": server.url("ok.jpg"), "caption": "x" * 5000}).encode()
    (tmp_path / "urls.jsonl").write_bytes(b"\n".join([good, huge, good]) + b"\n")
    source = parse_config(
        {
            "sources": [
                {
                    "name": "web",
                    "reader": "url_list",
                    "location": "urls.jsonl",
                    "allow_private_addresses": True,
                    "mapping": {"preset": "laion"},
                }
            ]
        },
        tmp_path,
    ).sources[0]
    params = PARAMS.model_copy(update={"max_record_bytes": 1024})
    kept, rejected = [], []
    for k, r in read_source(source, params):
        kept += k.to_pylist()
        rejected += r.to_pylist()
    assert [k["origin_key"] for k in kept] == ["urls.jsonl:0", "urls.jsonl:2"]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [
        ("urls.jsonl:1", "record_too_large")
    ]
