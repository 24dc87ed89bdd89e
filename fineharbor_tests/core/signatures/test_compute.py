"""compute_signatures: one row per image, nulls plus an error for undecodable images,
float16 unit embeddings, streaming output, the same rows with and without workers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor.core.signatures import (
    SIGNATURE_SCHEMA,
    SignatureParams,
    SscdEmbedder,
    compute_signatures,
)
from fineharbor_tests.conftest import make_image_bytes


def _batch(rows: list[tuple[str, list[bytes | None]]]) -> pa.RecordBatch:
    table = pa.Table.from_pylist(
        [
            {
                "sample_id": sample_id,
                "source": "src",
                "origin_uri": None,
                "origin_key": sample_id,
                "images": [{"bytes": b, "path": None} for b in images],
                "texts": [{"user": "q", "assistant": "a"}],
            }
            for sample_id, images in rows
        ],
        schema=UNIFIED_SCHEMA,
    )
    # an extra column a later stage added must be ignored
    table = table.append_column("image_info", pa.array([None] * table.num_rows, pa.string()))
    return table.to_batches()[0]


@pytest.fixture
def batches() -> list[pa.RecordBatch]:
    return [
        _batch([("a", [make_image_bytes(1)]), ("b", [make_image_bytes(2), b"corrupt bytes"])]),
        _batch([("c", []), ("d", [None]), ("e", [make_image_bytes(1)])]),
    ]


def _signed(batches, params, embedders=()) -> pa.Table:
    return pa.concat_tables(compute_signatures(batches, params, embedders))


def test_one_row_per_image_and_undecodable_images_get_an_error(batches, tiny_sscd):
    embedder = SscdEmbedder(tiny_sscd, device="cpu", batch_size=2)
    table = _signed(batches, SignatureParams(num_workers=0, batch_size=3), [embedder])
    assert table.schema == SIGNATURE_SCHEMA
    rows = table.to_pylist()
    assert [(r["sample_id"], r["image_index"]) for r in rows] == [
        ("a", 0), ("b", 0), ("b", 1), ("d", 0), ("e", 0),
    ]  # fmt: skip
    corrupt, missing = rows[2], rows[3]
    assert corrupt["error"].startswith("image_undecodable") and corrupt["sha256_bytes"]
    assert missing["error"] and missing["sha256_bytes"] is None
    for broken in (corrupt, missing):
        assert broken["phash"] is None and broken["copy_embedding"] is None
        assert broken["sha256_pixels"] is None and broken["width"] is None
    a, e = rows[0], rows[4]
    assert a["sha256_pixels"] == e["sha256_pixels"] and a["phash"] == e["phash"]
    assert (a["width"], a["height"]) == (320, 240)
    assert table.schema.field("copy_embedding").type == pa.list_(pa.float16())
    vector = np.asarray(a["copy_embedding"], dtype=np.float32)
    assert vector.shape == (24,) and abs(np.linalg.norm(vector) - 1) < 1e-2
    assert table.column("clip_embedding").null_count == table.num_rows


def test_switches_and_streaming_output(batches):
    params = SignatureParams(
        byte_hash=False, perceptual_hash=False, num_workers=0, batch_size=1, output_rows=2
    )
    tables = list(compute_signatures(batches, params))
    assert [t.num_rows for t in tables] == [2, 2, 1]
    table = pa.concat_tables(tables)
    assert table.column("sha256_bytes").null_count == table.num_rows
    assert table.column("phash").null_count == table.num_rows
    assert table.column("sha256_pixels").null_count == 2  # the two broken images


def test_worker_processes_give_the_same_rows(batches, tiny_sscd):
    embedder = SscdEmbedder(tiny_sscd, device="cpu")
    in_process = _signed(batches, SignatureParams(num_workers=0, batch_size=2), [embedder])
    with_workers = _signed(batches, SignatureParams(num_workers=2, batch_size=2), [embedder])
    assert in_process.equals(with_workers)


def test_embedders_must_name_a_signature_column(batches, tiny_sscd):
    embedder = SscdEmbedder(tiny_sscd, device="cpu")
    embedder.name = "something_else"
    with pytest.raises(ValueError, match="embedders must be named"):
        list(compute_signatures(batches, SignatureParams(num_workers=0), [embedder]))
