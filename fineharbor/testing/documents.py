"""Interleaved documents written as OBELICS Parquet, MINT-style JSONL and MINT-1T PDF-style
WebDataset shards (tests and the demo)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# OBELICS publishes `images` as a list of URL strings; files with embedded images use the
# `datasets` Image struct, as here.
OBELICS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        pa.field("texts", pa.list_(pa.string())),
        pa.field("metadata", pa.string()),
    ]
)


def document(doc_id: str, parts: list[bytes | str], metadata: dict | None = None) -> dict:
    """An OBELICS row from the document's parts in order (bytes: an image, str: a paragraph)."""
    return {
        "id": doc_id,
        "images": [
            {"bytes": p, "path": f"{doc_id}-{i}.jpg"} if isinstance(p, bytes) else None
            for i, p in enumerate(parts)
        ],
        "texts": [p if isinstance(p, str) else None for p in parts],
        "metadata": json.dumps(metadata or {"url": f"https://example.org/{doc_id}"}),
    }


def write_obelics_parquet(path: Path, rows: list[dict[str, Any]], schema=OBELICS_SCHEMA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_mint_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One document per line; images are paths (relative to the file's directory) or URLs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiff_pages(pages: list[Image.Image]) -> bytes:
    """A multi-page TIFF, as MINT-1T PDF/ArXiv shards store a document's images."""
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def write_document_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A WebDataset tar of document samples: per key, members by extension (``json``, ``tiff``,
    ``fig_a.png``...), written in order as ``<key>.<extension>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for extension, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    return path
