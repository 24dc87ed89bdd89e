"""One vector per sample from its images' signatures, for concept clustering."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EMBEDDING_CHOICES = ("copy_embedding", "clip_embedding")


def pick_column(signatures: pa.Table, choice: str) -> str:
    """The configured column, or for `auto` the first embedding with values, else phash."""
    if choice != "auto":
        if choice != "phash" and signatures.column(choice).null_count == signatures.num_rows > 0:
            raise ValueError(
                f"stages.concepts.embedding is {choice!r} but image_signatures holds no such "
                "vectors: configure the embedder in stages.signatures (sscd_path / clip_model)"
            )
        return choice
    for column in EMBEDDING_CHOICES:
        if signatures.column(column).null_count < signatures.num_rows:
            return column
    return "phash"


def _vectors(signatures: pa.Table, column: str) -> np.ndarray:
    if column == "phash":
        hashes = signatures.column("phash").to_numpy().astype(np.int64).view(np.uint64)
        bits = (hashes[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
        return (bits.astype(np.float32) * 2 - 1) / 8.0  # +-1 per bit, unit norm
    values = signatures.column(column).combine_chunks()
    return (
        values.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(values), -1)
    )


def sample_embeddings(
    signatures: pa.Table, sample_ids: set[str], choice: str
) -> tuple[list[str], list[str], np.ndarray, str]:
    """Mean of each sample's image vectors (L2-normalised), for the samples in `sample_ids`.

    Returns ids and sources sorted by sample_id (so the result does not depend on read order),
    the (n, d) float32 matrix, and the column used. Images without a vector are skipped.
    """
    if signatures.num_rows == 0:
        return [], [], np.zeros((0, 0), np.float32), "none"
    column = pick_column(signatures, choice)
    keep = pc.is_in(signatures.column("sample_id"), pa.array(sorted(sample_ids), pa.string()))
    keep = pc.and_(keep, pc.is_valid(signatures.column(column)))
    rows = signatures.filter(keep)
    if rows.num_rows == 0:
        return [], [], np.zeros((0, 0), np.float32), column
    vectors = _vectors(rows, column)
    ids = np.asarray(rows.column("sample_id").to_pylist())
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    sums = np.zeros((len(unique), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    means = (sums / np.where(norms > 0, norms, 1)).astype(np.float32)
    sources = rows.column("source").to_pylist()
    return unique.tolist(), [sources[i] for i in first], means, column
