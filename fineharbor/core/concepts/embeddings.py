"""One vector per sample from its images' signatures, for concept clustering."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EMBEDDING_CHOICES = ("copy_embedding", "clip_embedding")
_NO_IDS = pa.array([], pa.string())
# samples whose means are summed at once (float64: bounds the gathered block to ~128 MB at d=512)
BLOCK_SAMPLES = 16_384


def pick_column_from_counts(rows: int, null_counts: dict[str, int], choice: str) -> str:
    """:func:`pick_column` from the row count and each embedding column's null count (so the
    choice can be made while streaming, without holding the vectors)."""
    if choice != "auto":
        if choice != "phash" and null_counts[choice] == rows > 0:
            raise ValueError(
                f"stages.concepts.embedding is {choice!r} but image_signatures holds no such "
                "vectors: configure the embedder in stages.signatures (sscd_path / clip_model)"
            )
        return choice
    for column in EMBEDDING_CHOICES:
        if null_counts[column] < rows:
            return column
    return "phash"


def pick_column(signatures: pa.Table, choice: str) -> str:
    """The configured column, or for `auto` the first embedding with values, else phash."""
    counts = {c: signatures.column(c).null_count for c in EMBEDDING_CHOICES}
    return pick_column_from_counts(signatures.num_rows, counts, choice)


def _gather(rows: pa.Table, column: str, positions: np.ndarray) -> np.ndarray:
    """The vectors of ``rows`` at ``positions`` as a float64 matrix, from the column's stored
    values (a block at a time: the whole column is never held as floats)."""
    if column == "phash":
        hashes = rows.column("phash").take(pa.array(positions)).to_numpy().astype("<i8")
        # bit i of each hash at column i (8 bytes a row in flight, not 64 bit-sized integers)
        bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        vectors = bits.astype(np.float64)
        vectors *= 0.25
        vectors -= 0.125
        return vectors  # +-1/8 per bit: unit norm
    from fineharbor.core.dedup.clusters import gather_vectors

    return gather_vectors(rows.column(column), positions, np.float64)


def sample_embeddings(
    signatures: pa.Table, sample_ids: set[str] | pa.Array, choice: str, *, picked: bool = False
) -> tuple[pa.Array, pa.Array, np.ndarray, str]:
    """Mean of each sample's image vectors (L2-normalised), for the samples in `sample_ids`.

    Returns ids and sources sorted by sample_id (so the result does not depend on read order),
    the (n, d) float32 matrix, and the column used. Images without a vector are skipped.
    ``picked``: ``choice`` is the column already chosen (:func:`pick_column_from_counts`).
    """
    if signatures.num_rows == 0:
        return _NO_IDS, _NO_IDS, np.zeros((0, 0), np.float32), "none"
    column = choice if picked else pick_column(signatures, choice)
    wanted = (
        sample_ids
        if isinstance(sample_ids, pa.Array)
        else pa.array(sorted(sample_ids), pa.string())
    )
    keep = pc.is_in(signatures.column("sample_id"), wanted)
    keep = pc.and_(keep, pc.is_valid(signatures.column(column)))
    rows = signatures if pc.all(keep).as_py() else signatures.filter(keep)
    if rows.num_rows == 0:
        return _NO_IDS, _NO_IDS, np.zeros((0, 0), np.float32), column
    ids = rows.column("sample_id")
    unique = pc.unique(ids)
    unique = unique.take(pc.sort_indices(unique))
    inverse = pc.index_in(ids, value_set=unique).to_numpy(zero_copy_only=False)
    # rows grouped by sample, in read order within a sample: each mean is summed in float64
    # one block of samples at a time, gathered from the stored values, so what is held is the
    # stored column plus the (n, d) float32 means
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
    means: np.ndarray | None = None
    for first in range(0, len(starts), BLOCK_SAMPLES):
        segment = starts[first : first + BLOCK_SAMPLES]
        stop = first + BLOCK_SAMPLES
        end = starts[stop] if stop < len(starts) else order.size
        chunk = _gather(rows, column, order[segment[0] : end])
        sums = np.add.reduceat(chunk, segment - segment[0], axis=0)
        del chunk
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        if means is None:
            means = np.empty((len(unique), sums.shape[1]), dtype=np.float32)
        means[first : first + len(segment)] = sums / np.where(norms > 0, norms, 1)
    sources = rows.column("source").take(pa.array(order[starts])).combine_chunks()
    return unique, sources, means, column


def stream_signatures(
    batches: Iterable[pa.RecordBatch], sample_ids: pa.Array, columns: list[str]
) -> pa.Table:
    """The ``columns`` of the signature rows of ``sample_ids``, batch by batch."""
    tables = [
        pa.Table.from_batches(
            [batch.filter(pc.is_in(batch.column("sample_id"), sample_ids))]
        ).select(columns)
        for batch in batches
    ]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})
