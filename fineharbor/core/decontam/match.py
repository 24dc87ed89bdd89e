"""Matching train samples against the benchmark index; one reject row per contaminated sample."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.decontam.index import as_matrix
from fineharbor.core.decontam.params import DecontamParams
from fineharbor.core.decontam.text import turn_ngrams
from fineharbor.core.distributed.tasks import TaskEngine, map_tasks, row_ranges
from fineharbor.core.pipeline import DECONTAMINATED
from fineharbor.core.schema import REJECT_SCHEMA

REASON = "benchmark_match"
BENCHMARK_SOURCE = "benchmark_source"

DECONTAM_REJECT_SCHEMA = pa.schema(
    [
        *REJECT_SCHEMA,
        pa.field("benchmark", pa.string()),
        pa.field("matched_sample_id", pa.string()),
        pa.field("matched_origin_key", pa.string()),
        pa.field("signal", pa.string()),
        pa.field("similarity", pa.float32()),
        pa.field("images_flagged", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Match:
    benchmark: str
    sample_id: str
    origin_key: str
    signal: str
    similarity: float

    def stronger_than(self, other: Match | None) -> bool:
        # Image evidence outranks text; within a signal, the closer match wins.
        rank = {"copy_embedding": 3, "clip_embedding": 3, "phash": 2, "text_ngram": 1}
        if other is None:
            return True
        return (rank[self.signal], self.similarity) > (rank[other.signal], other.similarity)


def _phash_bytes(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values.astype("<i8")).view(np.uint8).reshape(-1, 8)


def _valid_int64(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Positions of non-null values and the values, exact (no float round trip for 64 bits)."""
    rows = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False))
    values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, values[rows]


def _orientation_hashes(
    signatures: pa.Table, rotations: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The train images' phashes to look up: as signed, mirrored and, with ``rotations`` and
    signatures that carry them, the six rotated / upside-down variants (a benchmark image turned
    by 90 degrees is found by the variant that turns it back)."""
    columns = [signatures.column("phash"), signatures.column("phash_flip")]
    if rotations and "phash_dihedral" in signatures.column_names:
        variants = signatures.column("phash_dihedral").combine_chunks()
        width = pc.max(pc.list_value_length(variants)).as_py() or 0
        columns += [pc.list_element(variants, k) for k in range(width)]
    return [_valid_int64(column) for column in columns]


def _nearest_rows(
    rows: tuple[int, int], queries: np.ndarray, database: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """One task: the nearest database row of queries ``[start, stop)`` and its score (inner
    product, or Hamming distance of 64-bit codes)."""
    start, stop = rows
    if metric == "hamming":
        scores, found = faiss.knn_hamming(queries[start:stop], database, 1)
    else:
        scores, found = faiss.knn(
            queries[start:stop], database, 1, metric=faiss.METRIC_INNER_PRODUCT
        )
    return scores[:, 0], found[:, 0]


class BenchmarkMatcher:
    """Holds the index in memory: vectors and hashes searched exhaustively (faiss), in tasks of
    ``engine.task_rows`` train rows on ``engine`` (Ray when the stage runs there), and a dict for
    n-grams."""

    def __init__(
        self, index: pa.Table, params: DecontamParams, engine: TaskEngine | None = None
    ) -> None:
        self.params = params
        self.engine = engine or TaskEngine(DECONTAMINATED)
        images = index.filter(pc.equal(index.column("kind"), "image"))
        self._image_meta = images.select(["benchmark", "sample_id", "origin_key"]).to_pylist()
        vectors, self._vector_rows = as_matrix(images.column("embedding"))
        # the databases every task reads: in Ray's object store once, not once per task
        self._vectors = None
        self._dimensions = vectors.shape[1]
        if params.embedding and vectors.size:
            self._vectors = self.engine.share(np.ascontiguousarray(vectors, np.float32))
        self._hashes = None
        if params.use_phash:
            rows, values = _valid_int64(images.column("phash"))
            if rows.size:
                self._hash_rows = rows
                self._hashes = self.engine.share(_phash_bytes(values))
        grams = index.filter(pc.equal(index.column("kind"), "ngram")).to_pylist()
        self._grams = {row["ngram"]: row for row in reversed(grams)}

    def _nearest(self, queries: np.ndarray, database, metric: str):
        parts = map_tasks(
            _nearest_rows,
            row_ranges(len(queries), self.engine.task_rows),
            engine=self.engine,
            shared=(queries, database, metric),
        )
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @property
    def image_count(self) -> int:
        return len(self._image_meta)

    @property
    def empty(self) -> bool:
        return not self._image_meta and not self._grams

    def _image(self, row: int, signal: str, similarity: float) -> Match:
        meta = self._image_meta[row]
        return Match(meta["benchmark"], meta["sample_id"], meta["origin_key"], signal, similarity)

    def match_images(self, signatures: pa.Table) -> list[Match | None]:
        """The best benchmark match of each signature row (one row per train image)."""
        matches: list[Match | None] = [None] * signatures.num_rows
        if self._vectors is not None and self.params.embedding:
            vectors, rows = as_matrix(signatures.column(self.params.embedding))
            if rows.size:
                if vectors.shape[1] != self._dimensions:
                    raise ValueError(
                        f"train {self.params.embedding} has {vectors.shape[1]} dimensions, the "
                        f"benchmark index {self._dimensions}: re-run benchmark_index"
                    )
                scores, found = self._nearest(vectors, self._vectors, "inner_product")
                for row, score, hit in zip(rows, scores, found, strict=True):
                    if hit >= 0 and score >= self.params.image_threshold:
                        match = self._image(
                            int(self._vector_rows[hit]), self.params.embedding, float(score)
                        )
                        if match.stronger_than(matches[row]):
                            matches[row] = match
        if self._hashes is not None:
            orientations = [
                (rows, values)
                for rows, values in _orientation_hashes(signatures, self.params.phash_rotations)
                if rows.size
            ]
            if orientations:
                # every orientation in one search, split back in order
                distances, found = self._nearest(
                    _phash_bytes(np.concatenate([values for _, values in orientations])),
                    self._hashes,
                    "hamming",
                )
                rows = np.concatenate([rows for rows, _ in orientations])
                for row, distance, hit in zip(rows, distances, found, strict=True):
                    if hit >= 0 and distance <= self.params.phash_max_distance:
                        match = self._image(int(self._hash_rows[hit]), "phash", 1 - distance / 64)
                        if match.stronger_than(matches[row]):
                            matches[row] = match
        return matches

    def match_text(self, turns: list[dict]) -> Match | None:
        if not self.params.use_text or not self._grams:
            return None
        for gram in sorted(turn_ngrams(turns, ("user", "assistant"), self.params.ngram)):
            row = self._grams.get(gram)
            if row is not None:
                return Match(
                    row["benchmark"], row["sample_id"], row["origin_key"], "text_ngram", 1.0
                )
        return None


ImageMatches = tuple[dict[str, Match], dict[str, int]]


def image_matches(signatures: pa.Table, matcher: BenchmarkMatcher) -> ImageMatches:
    """Per sample of ``signatures``: its best image match and how many of its images matched."""
    best: dict[str, Match] = {}
    flagged: dict[str, int] = {}
    for sample_id, match in zip(
        signatures.column("sample_id").to_pylist(), matcher.match_images(signatures), strict=True
    ):
        if match is None:
            continue
        flagged[sample_id] = flagged.get(sample_id, 0) + 1
        if match.stronger_than(best.get(sample_id)):
            best[sample_id] = match
    return best, flagged


def decontaminate_batch(
    samples: pa.Table,
    signatures: pa.Table,
    matcher: BenchmarkMatcher,
    matched: ImageMatches | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Split samples into kept rows (unchanged) and `benchmark_match` rejects.

    `signatures` holds the image signature rows of these samples (any order, extra rows ignored);
    ``matched``: :func:`image_matches` of a signature table holding them, computed once for a
    whole partition (one search, in tasks) instead of once per batch.
    """
    ids = samples.column("sample_id").to_pylist()
    if matched is None:
        wanted = pc.is_in(signatures.column("sample_id"), value_set=pa.array(ids, pa.string()))
        matched = image_matches(signatures.filter(wanted), matcher)
    best = {i: matched[0][i] for i in ids if i in matched[0]}
    flagged = matched[1]
    texts = samples.column("texts").to_pylist()
    for sample_id, turns in zip(ids, texts, strict=True):
        if sample_id not in best:
            match = matcher.match_text(turns)
            if match is not None:
                best[sample_id] = match
    keep = [sample_id not in best for sample_id in ids]
    rejected = []
    for row in (
        samples.filter(pa.array([not k for k in keep]))
        .select(["sample_id", "source", "origin_key"])
        .to_pylist()
    ):
        match = best[row["sample_id"]]
        rejected.append(
            {
                **row,
                "reason": REASON,
                "detail": (
                    f"{match.signal} {match.similarity:.3f} with "
                    f"{match.benchmark}/{match.origin_key}"
                ),
                "benchmark": match.benchmark,
                "matched_sample_id": match.sample_id,
                "matched_origin_key": match.origin_key,
                "signal": match.signal,
                "similarity": match.similarity,
                "images_flagged": flagged.get(row["sample_id"], 0),
            }
        )
    return samples.filter(pa.array(keep)), pa.Table.from_pylist(
        rejected, schema=DECONTAM_REJECT_SCHEMA
    )


def reject_benchmark_rows(samples: pa.Table) -> pa.Table:
    """A benchmark source's own samples never enter training data."""
    rows = samples.select(["sample_id", "source", "origin_key"]).to_pylist()
    return pa.Table.from_pylist(
        [{**r, "reason": BENCHMARK_SOURCE, "detail": "role: benchmark"} for r in rows],
        schema=DECONTAM_REJECT_SCHEMA,
    )
