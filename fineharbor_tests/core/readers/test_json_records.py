"""Hostile JSON and JSONL sources: every line or element is a record or a reject with a reason,
and one bad record never costs the records after it."""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest

from fineharbor.core.readers.json_records import json_values, jsonl_records
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.core.readers.helpers import make_source, read_whole

# Over the default stages.ingest.max_record_bytes (4 MiB).
OVER_LIMIT = 5 << 20


def good(key: str, image: str = "images/1.jpg") -> dict:
    return {
        "id": key,
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
    }


@pytest.fixture
def images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.jpg").write_bytes(make_image_bytes(1))
    return tmp_path


def json_source(tmp_path, location: str):
    return make_source(
        tmp_path,
        reader="json",
        location=location,
        image_root=str(tmp_path),
        mapping={"preset": "llava", "origin_key": "id"},
    )


def test_hostile_jsonl_lines_are_rejects_and_the_file_goes_on(images):
    lines = [
        json.dumps(good("a")).encode(),
        b"5",
        b"null",
        b"[1, 2]",
        b'{"id": "u", "note": "\xff\xfe"}',  # not UTF-8
        b"[" * 3000 + b"]" * 3000,
        b'{"id": "d", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        json.dumps({**good("big"), "pad": "x" * OVER_LIMIT}).encode(),
        json.dumps(good("nul", "images/1.jpg\x00.png")).encode(),
        json.dumps(good("gone", "images/missing.jpg")).encode(),
        b'{"id": "s", "note": "\\ud800"}',  # a lone surrogate no Arrow string can hold
        b"",
        json.dumps(good("z")).encode(),
    ]
    (images / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    kept, rejected, _ = read_whole(json_source(images, "data.jsonl"))
    assert [k["origin_key"] for k in kept] == ["a", "z"]
    reasons = {r["origin_key"]: r["reason"] for r in rejected}
    assert reasons == {
        "data.jsonl:1": "malformed_record",
        "data.jsonl:2": "malformed_record",
        "data.jsonl:3": "malformed_record",
        "data.jsonl:4": "malformed_record",
        "data.jsonl:5": "record_too_deep",
        "data.jsonl:6": "record_too_deep",
        "data.jsonl:7": "record_too_large",
        "nul": "image_path_invalid",
        "gone": "image_missing",
        "data.jsonl:10": "malformed_record",
    }
    details = {r["origin_key"]: r["detail"] for r in rejected}
    assert "expected an object, got int" in details["data.jsonl:1"]
    assert "invalid UTF-8 at byte" in details["data.jsonl:4"]
    # rows in = kept + rejected, at the level of lines (the blank line is no record)
    assert len(kept) + len(rejected) == sum(1 for line in lines if line)


def test_an_over_long_line_is_rejected_without_reading_it_whole(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"pad": "' + b"x" * (6 * OVER_LIMIT) + b'"}\n{"id": "a"}\n')
    tracemalloc.start()
    try:
        parsed = list(jsonl_records(path, OVER_LIMIT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(p.index, p.reason) for p in parsed] == [(0, "record_too_large"), (1, "")]
    assert parsed[1].record == {"id": "a"}
    assert peak < 3 * OVER_LIMIT  # bounded by the limit, not by the 30 MiB line


@pytest.mark.parametrize("bad", [b"\xff", b"x", b'"', b"}", b"[", b"]", b",", b"\\", b"\x00"])
@pytest.mark.parametrize("indent", [None, 1])
def test_a_bad_byte_in_element_2_costs_that_element_only(images, bad, indent):
    records = [good(str(i)) for i in range(1000)]
    text = json.dumps(records, indent=indent).encode()
    at = text.index(b'"id": "2"') + len(b'"id": ')
    (images / "data.json").write_bytes(text[:at] + bad + text[at:])
    kept, rejected, _ = read_whole(json_source(images, "data.json"))
    keys = {k["origin_key"] for k in kept}
    assert keys >= {str(i) for i in range(1000)} - {"2"}
    assert rejected, "the broken element is a reject"
    assert all(r["reason"] == "malformed_record" for r in rejected)
    assert all("byte" in r["detail"] for r in rejected)


def test_json_array_deep_non_object_and_oversized_elements(images):
    parts = [
        json.dumps(good("a")).encode(),
        b"[" * 3000 + b"]" * 3000,
        b'{"id": "d", "x": ' + b'{"y": ' * 3000 + b"1" + b"}" * 3001,
        b"5",
        b"null",
        json.dumps({**good("big"), "pad": "x" * OVER_LIMIT}).encode(),
        json.dumps(good("z")).encode(),
    ]
    (images / "data.json").write_bytes(b"[" + b",\n".join(parts) + b"]")
    kept, rejected, _ = read_whole(json_source(images, "data.json"))
    assert [k["origin_key"] for k in kept] == ["a", "z"]
    assert [r["reason"] for r in rejected] == [
        "record_too_deep",
        "record_too_deep",
        "malformed_record",
        "malformed_record",
        "record_too_large",
    ]


def test_a_truncated_array_keeps_what_precedes_the_cut(images):
    text = json.dumps([good(str(i)) for i in range(5)]).encode()
    (images / "data.json").write_bytes(text[: text.index(b'"id": "4"') + 3])
    kept, rejected, _ = read_whole(json_source(images, "data.json"))
    assert [k["origin_key"] for k in kept] == ["0", "1", "2", "3"]
    assert len(rejected) == 1
    assert "the rest of the file" in rejected[0]["detail"]


def test_json_file_holding_objects_one_per_line_is_read_like_jsonl(images):
    lines = [json.dumps(good("a")), "{broken", json.dumps(good("b"))]
    (images / "data.json").write_text("\n".join(lines) + "\n")
    kept, rejected, _ = read_whole(json_source(images, "data.json"))
    assert [k["origin_key"] for k in kept] == ["a", "b"]
    assert [r["reason"] for r in rejected] == ["malformed_record"]


def test_fifos_and_links_out_of_the_source_are_file_rejects(tmp_path, images):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jsonl"
    outside.write_text(json.dumps(good("secret")) + "\n")
    (images / "data").mkdir()
    (images / "data" / "ok.jsonl").write_text(json.dumps(good("a")) + "\n")
    (images / "data" / "link.jsonl").symlink_to(outside)
    os.mkfifo(images / "data" / "pipe.jsonl")
    kept, rejected, _ = read_whole(json_source(images, "data"))
    assert [k["origin_key"] for k in kept] == ["a"]
    assert {(r["origin_key"], r["reason"]) for r in rejected} == {
        ("link.jsonl", "path_outside_source"),
        ("pipe.jsonl", "file_unreadable"),
    }


def test_an_over_long_array_element_is_skipped_in_a_bounded_window(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[{"id": "a"}, {"pad": "' + b"x" * (6 * OVER_LIMIT) + b'"}, {"id": "b"}]')
    tracemalloc.start()
    try:
        parsed = list(json_values(path, OVER_LIMIT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(p.index, p.reason) for p in parsed] == [(0, ""), (1, "record_too_large"), (2, "")]
    assert peak < 3 * OVER_LIMIT  # bounded by the limit, not by the 30 MiB element
