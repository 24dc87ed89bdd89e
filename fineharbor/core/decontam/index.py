"""The benchmark index: benchmark images' signatures and benchmark questions' n-grams."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.decontam.params import DecontamParams
from fineharbor.core.decontam.text import turn_ngrams

EMBEDDER_KEY = b"embedder"

BENCHMARK_INDEX_SCHEMA = pa.schema(
    [
        pa.field("benchmark", pa.string(), nullable=False),
        pa.field("sample_id", pa.string()),
        pa.field("origin_key", pa.string()),
        pa.field("kind", pa.string(), nullable=False),  # "image" or "ngram"
        pa.field("image_index", pa.int32()),
        pa.field("phash", pa.int64()),
        pa.field("phash_flip", pa.int64()),
        pa.field("embedding", pa.list_(pa.float16())),
        pa.field("ngram", pa.int64()),
    ]
)


class EmbedderMismatchError(ValueError):
    """Precomputed benchmark embeddings come from another model: cosines would be meaningless."""


def image_rows(signatures: pa.Table, keys: dict[str, str], params: DecontamParams) -> pa.Table:
    """Index rows for a benchmark's images, from its `image_signatures` partition."""
    table = signatures.filter(pa.compute.is_null(signatures.column("error")))
    embedding = (
        table.column(params.embedding)
        if params.embedding
        else pa.nulls(table.num_rows, pa.list_(pa.float16()))
    )
    known = pa.array(list(keys), pa.string())
    where = pa.compute.index_in(table.column("sample_id"), value_set=known)
    origin = pa.array(list(keys.values()), pa.string()).take(where)
    return pa.Table.from_arrays(
        [
            table.column("source"),
            table.column("sample_id"),
            origin,
            pa.array(["image"] * table.num_rows, pa.string()),
            table.column("image_index"),
            table.column("phash"),
            table.column("phash_flip"),
            embedding,
            pa.nulls(table.num_rows, pa.int64()),
        ],
        schema=BENCHMARK_INDEX_SCHEMA,
    )


def ngram_rows(samples: Iterable[dict], params: DecontamParams) -> pa.Table:
    """Index rows for a benchmark's question (and optionally answer) n-grams."""
    rows = []
    for sample in samples:
        for gram in sorted(turn_ngrams(sample["texts"], params.text_fields, params.ngram)):
            rows.append(
                {
                    "benchmark": sample["source"],
                    "sample_id": sample["sample_id"],
                    "origin_key": sample["origin_key"],
                    "kind": "ngram",
                    "ngram": gram,
                }
            )
    return pa.Table.from_pylist(rows, schema=BENCHMARK_INDEX_SCHEMA)


def precomputed_rows(path: Path, embedder: str, params: DecontamParams) -> pa.Table:
    """Benchmark embeddings published by someone else (FineVision released theirs).

    The file must say which model made it (schema metadata `embedder`), and it must be the model
    this project embeds train images with; otherwise nothing could be compared.
    """
    table = pq.read_table(path)
    found = (table.schema.metadata or {}).get(EMBEDDER_KEY, b"").decode()
    if found != embedder:
        raise EmbedderMismatchError(
            f"{path}: embeddings were made by {found or 'an unnamed model'!r}, but this project "
            f"embeds with {embedder!r}; set the schema metadata 'embedder' or use that model"
        )
    if "embedding" not in table.column_names:
        raise ValueError(f"{path}: no 'embedding' column (columns: {table.column_names})")
    n = table.num_rows
    names = table.column_names
    benchmark = table.column("benchmark") if "benchmark" in names else pa.array([path.stem] * n)
    ids = table.column("id").cast(pa.string()) if "id" in names else pa.array(map(str, range(n)))
    embedding = table.column("embedding").cast(pa.list_(pa.float16()))
    return pa.Table.from_arrays(
        [
            benchmark.cast(pa.string()),
            ids,
            ids,
            pa.array(["image"] * n, pa.string()),
            pa.nulls(n, pa.int32()),
            pa.nulls(n, pa.int64()),
            pa.nulls(n, pa.int64()),
            embedding,
            pa.nulls(n, pa.int64()),
        ],
        schema=BENCHMARK_INDEX_SCHEMA,
    ).replace_schema_metadata(None)


def embedding_dim(index: pa.Table) -> int | None:
    images = index.filter(pa.compute.equal(index.column("kind"), "image"))
    lengths = pa.compute.drop_null(pa.compute.list_value_length(images.column("embedding")))
    return lengths[0].as_py() if len(lengths) else None


def as_matrix(
    values: list[list[float] | None] | pa.Array | pa.ChunkedArray,
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 matrix of the non-null vectors (L2-normalised) and their row positions; an Arrow
    list column is read from its buffers."""
    from fineharbor.core.dedup.clusters import list_matrix

    if not isinstance(values, pa.Array | pa.ChunkedArray):
        values = pa.array(values, pa.list_(pa.float32()))
    positions = np.flatnonzero(pa.compute.is_valid(values).to_numpy(zero_copy_only=False))
    if positions.size == 0:
        return np.zeros((0, 0), dtype=np.float32), positions.astype(np.int64)
    matrix = list_matrix(values, np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12), positions.astype(np.int64)
