"""The compact per-sample table deduplication works on (no image bytes).

Built from unified batches (only unified columns are read) while the partition streams, so the
global dedup stage holds a few hundred bytes per sample instead of the images.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
from PIL import Image

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin_uri", pa.string()),
        pa.field("text", pa.string()),
        pa.field("n_images", pa.int32()),
        pa.field("max_pixels", pa.int64()),
        pa.field("quality", pa.float64()),
        # an interleaved document: its text is deduplicated like a text-only sample's
        pa.field("document", pa.bool_()),
    ]
)


def sample_text(turns: list[dict] | None) -> str:
    """All turns as one string (user then assistant per turn) for text keys and MinHash."""
    parts = []
    for turn in turns or []:
        if not turn:
            continue
        for role in ("user", "assistant"):
            if turn.get(role):
                parts.append(turn[role])
    return "\n".join(parts)


def header_pixels(data: bytes | None) -> int | None:
    """Width x height from the image header only (no decode); None when unreadable."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # any unreadable header: the resolution criterion just ignores it
        return None
    return width * height


def compact_samples(
    batches: Iterable[pa.RecordBatch], quality_column: str | None = None
) -> pa.Table:
    """``SAMPLE_SCHEMA`` rows for every sample of the batches.

    ``quality_column`` names an optional numeric column (e.g. a learned quality score added by
    a scoring stage) copied into ``quality``; the keep policy uses it after resolution.
    """
    tables = []
    for batch in batches:
        images = batch.column("images").to_pylist()
        pixels = []
        for sample_images in images:
            sizes = [header_pixels(im.get("bytes")) for im in (sample_images or []) if im]
            known = [s for s in sizes if s is not None]
            pixels.append(max(known) if known else None)
        if quality_column is not None and quality_column in batch.schema.names:
            quality = pa.array(batch.column(quality_column).to_pylist(), type=pa.float64())
        else:
            quality = pa.nulls(batch.num_rows, type=pa.float64())
        documents = (
            batch.column("segments").is_valid()
            if "segments" in batch.schema.names
            else pa.array([False] * batch.num_rows, pa.bool_())
        )
        tables.append(
            pa.table(
                {
                    "sample_id": batch.column("sample_id"),
                    "source": batch.column("source"),
                    "origin_uri": batch.column("origin_uri"),
                    "text": pa.array(
                        [sample_text(t) for t in batch.column("texts").to_pylist()], pa.string()
                    ),
                    "n_images": pa.array([len(i or []) for i in images], pa.int32()),
                    "max_pixels": pa.array(pixels, pa.int64()),
                    "quality": quality,
                    "document": documents,
                },
                schema=SAMPLE_SCHEMA,
            )
        )
    if not tables:
        return SAMPLE_SCHEMA.empty_table()
    return pa.concat_tables(tables)
