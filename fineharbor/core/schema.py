"""Arrow schemas shared by every stage, and the deterministic sample id.

The unified sample follows FineVision's published layout (``images``, ``texts``, ``source``) so
a release loads with ``datasets.load_dataset("parquet", ...)``. Later stages append columns; they
never drop or rename the ones defined here.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

# Hugging Face `datasets` Image feature, stored undecoded.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TURN_TYPE = pa.struct([("user", pa.string()), ("assistant", pa.string())])
# One position of an interleaved document: an index into `images` (text null) or a paragraph
# (image null). See fineharbor.core.interleaved.
SEGMENT_TYPE = pa.struct([("image", pa.int32()), ("text", pa.string())])

PROVENANCE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("origin_uri", pa.string()),
    pa.field("origin_key", pa.string(), nullable=False),
]

# What a reader yields: the record's own fields as JSON (sources are heterogeneous, so the
# original layout is kept verbatim for the mapping step) plus the images it referenced, fetched.
RAW_SCHEMA = pa.schema(
    [
        *PROVENANCE_FIELDS,
        pa.field("record", pa.string(), nullable=False),
        pa.field("images", pa.list_(IMAGE_TYPE)),
    ]
)

UNIFIED_SCHEMA = pa.schema(
    [
        *PROVENANCE_FIELDS,
        pa.field("images", pa.list_(IMAGE_TYPE)),
        pa.field("texts", pa.list_(TURN_TYPE)),
        # interleaved documents only (null for caption and chat samples): document order and
        # the document's metadata JSON, as OBELICS / MINT-1T publish them
        pa.field("segments", pa.list_(SEGMENT_TYPE)),
        pa.field("metadata", pa.string()),
    ]
)

# One row per dropped sample, for every stage. `reason` is a stable code, `detail` the measured
# value against its threshold. A stage may append its own columns (e.g. `duplicate_of`).
REJECT_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin_key", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)


def make_sample_id(source: str, origin_key: str) -> str:
    """Stable id: the same source and origin key give the same id on every run and machine."""
    digest = hashlib.sha256(f"{source}\x1f{origin_key}".encode()).hexdigest()
    return digest[:32]


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def rejects_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def reject_row(source: str, origin_key: str, reason: str, detail: str = "") -> dict:
    return {
        "sample_id": make_sample_id(source, origin_key),
        "source": source,
        "origin_key": origin_key,
        "reason": reason,
        "detail": detail,
    }
