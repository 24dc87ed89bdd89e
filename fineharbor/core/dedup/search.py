"""Similarity search for near-duplicates: embeddings by cosine, perceptual hashes by Hamming.

Embeddings (L2-normalised, so inner product = cosine):

* up to ``exact_limit`` vectors: faiss ``IndexFlatIP`` range search, exact, in query blocks so
  the result lists stay bounded;
* above it: an approximate index (IVF-Flat by default, HNSW optional) with range search; its
  recall against exact search is measured on a sample with :func:`measure_recall`.

Perceptual hashes (64 bits): faiss ``IndexBinaryFlat`` range search while it fits, then
``IndexBinaryMultiHash``, which splits the code into ``max_distance + 1`` pieces; by the
pigeonhole principle two codes within that distance share at least one piece exactly, so the
multi-hash search is still exact, only faster. Mirror-image hashes are added to the database so
a flipped copy is found as well.

Every function returns pairs as three aligned arrays ``(i, j, similarity)`` with ``i < j``,
one row per pair, sorted, so results do not depend on faiss thread scheduling.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]
ApproxKind = Literal["ivf", "hnsw"]


def empty_pairs() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def canonical_pairs(i: np.ndarray, j: np.ndarray, sim: np.ndarray, *, higher: bool = True) -> Pairs:
    """Orient pairs as (min, max), drop self-pairs, keep the best similarity of repeated pairs,
    sort by (i, j)."""
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    sim = np.asarray(sim, np.float32)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = lo != hi
    lo, hi, sim = lo[keep], hi[keep], sim[keep]
    if lo.size == 0:
        return empty_pairs()
    # best similarity first within each (lo, hi), then the first row of each group wins
    order = np.lexsort((-sim if higher else sim, hi, lo))
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(lo.size, dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], sim[first]


# --------------------------------------------------------------------------- embeddings


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


# HNSW neighbours read per query: faiss's HNSW range search aborts the process on some inputs
# (RangeSearchResult::do_allocation, faiss 1.15), so HNSW answers k-NN queries, filtered by the
# threshold; a query with more near-duplicates than this keeps its closest ones, and union-find
# still joins the rest of their cluster through them.
HNSW_NEIGHBOURS = 32


def _knn_as_ranges(index: faiss.Index, queries: np.ndarray, radius: float):
    sims, ids = index.search(queries, min(HNSW_NEIGHBOURS, index.ntotal))
    keep = (ids >= 0) & (sims > radius)
    lims = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    return lims, sims[keep], ids[keep]


def _range_search_blocks(index: faiss.Index, queries: np.ndarray, threshold: float, block: int):
    """faiss returns IP strictly above the radius; search just below it and filter with >=."""
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    search = (
        (lambda q: _knn_as_ranges(index, q, radius))
        if isinstance(index, faiss.IndexHNSW)
        else (lambda q: index.range_search(q, radius))
    )
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(queries), block):
        lims, sims, ids = search(queries[start : start + block])
        counts = np.diff(lims).astype(np.int64)
        rows = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
        keep = sims >= threshold
        out_i.append(rows[keep])
        out_j.append(ids[keep].astype(np.int64))
        out_s.append(sims[keep])
    if not out_i:
        return empty_pairs()
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def exact_cosine_pairs(vectors: np.ndarray, threshold: float, *, block: int = 8192) -> Pairs:
    """All pairs with cosine >= ``threshold`` (vectors already L2-normalised), exact.

    Each block of queries searches an ``IndexFlatIP`` holding only the vectors from the block
    on: pairs are symmetric, so the upper triangle is half the work of an all-vs-all search.
    """
    x = _as_float32(vectors)
    if len(x) < 2:
        return empty_pairs()
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(x), block):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[start:])
        i, j, sim = _range_search_blocks(index, x[start : start + block], threshold, block)
        out_i.append(i + start)
        out_j.append(j + start)
        out_s.append(sim)
    return canonical_pairs(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s))


def ivf_nlist(n: int) -> int:
    """Number of IVF lists: ~4 sqrt(n) (faiss guideline), at least 1, at most n / 39 so each
    centroid has the 39 training points faiss asks for."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def build_approximate_index(
    vectors: np.ndarray,
    *,
    kind: ApproxKind = "ivf",
    nprobe: int = 4,
    hnsw_m: int = 32,
    hnsw_ef_search: int = 128,
    train_per_list: int = 40,
    kmeans_iterations: int = 10,
    seed: int = 0,
) -> faiss.Index:
    """An inner-product index over ``vectors`` for range search at scale.

    IVF k-means trains on ``train_per_list`` points per list (faiss asks for at least 39) with
    ``kmeans_iterations`` iterations: at a million vectors training dominates the build, and
    near-duplicates sit so close together that coarse centroids lose almost none of them
    (``measure_recall`` says how many).
    """
    x = _as_float32(vectors)
    d = x.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = hnsw_ef_search
        index.add(x)
        return index
    nlist = ivf_nlist(len(x))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train_size = train_per_list * nlist
    sample = x if len(x) <= train_size else x[np.sort(rng.choice(len(x), train_size, False))]
    index.cp.seed = seed  # deterministic k-means
    index.cp.niter = kmeans_iterations
    index.train(sample)
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    return index


def approximate_cosine_pairs(
    vectors: np.ndarray, threshold: float, index: faiss.Index, *, block: int = 8192
) -> Pairs:
    return canonical_pairs(*_range_search_blocks(index, _as_float32(vectors), threshold, block))


def cosine_pairs(
    vectors: np.ndarray,
    threshold: float,
    *,
    exact_limit: int = 200_000,
    kind: ApproxKind = "ivf",
    nprobe: int = 4,
    block: int = 8192,
) -> Pairs:
    """Pairs with cosine >= ``threshold``: exact up to ``exact_limit`` vectors, approximate
    above (see :func:`measure_recall` for what that costs)."""
    if len(vectors) <= exact_limit:
        return exact_cosine_pairs(vectors, threshold, block=block)
    index = build_approximate_index(vectors, kind=kind, nprobe=nprobe)
    return approximate_cosine_pairs(vectors, threshold, index, block=block)


def brute_force_cosine_pairs(vectors: np.ndarray, threshold: float, *, block: int = 2048) -> Pairs:
    """The NumPy baseline: blocked matrix products, upper triangle only. Exact; O(n^2 d)."""
    x = _as_float32(vectors)
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x[start:].T
        rows, cols = np.nonzero(sims >= threshold)
        cols_global = cols + start
        keep = cols_global > rows + start
        out_i.append(rows[keep] + start)
        out_j.append(cols_global[keep])
        out_s.append(sims[rows[keep], cols[keep]])
    if not out_i:
        return empty_pairs()
    return canonical_pairs(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s))


@dataclass(frozen=True)
class RecallReport:
    """Recall of an approximate range search against exact search on sampled queries."""

    queries: int
    exact_neighbours: int
    found: int
    seconds: float

    @property
    def recall(self) -> float:
        return self.found / self.exact_neighbours if self.exact_neighbours else 1.0


def measure_recall(
    vectors: np.ndarray,
    threshold: float,
    index: faiss.Index,
    *,
    sample: int = 1000,
    seed: int = 0,
) -> RecallReport:
    """Share of true neighbours (cosine >= threshold, exact NumPy search against all vectors)
    of ``sample`` random queries that ``index`` returns."""
    started = time.perf_counter()
    x = _as_float32(vectors)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))
    queries = x[picked]
    exact: set[tuple[int, int]] = set()
    for start in range(0, len(queries), 256):
        sims = queries[start : start + 256] @ x.T
        rows, cols = np.nonzero(sims >= threshold)
        exact.update(
            (int(picked[start + r]), int(c))
            for r, c in zip(rows, cols, strict=True)
            if picked[start + r] != c
        )
    found_i, found_j, _ = _range_search_blocks(index, queries, threshold, 4096)
    found = {(int(picked[r]), int(c)) for r, c in zip(found_i, found_j, strict=True)}
    hits = len(exact & found)
    return RecallReport(len(picked), len(exact), hits, time.perf_counter() - started)


# --------------------------------------------------------------------------- binary codes


def int64_codes_to_bytes(codes: np.ndarray) -> np.ndarray:
    """(n,) int64 -> (n, 8) uint8 in big-endian order, the layout faiss binary indexes take."""
    return np.ascontiguousarray(np.asarray(codes, dtype=">i8")).view(np.uint8).reshape(-1, 8)


def hamming_pairs(
    codes: np.ndarray,
    max_distance: int,
    *,
    mirror_codes: np.ndarray | None = None,
    exact_limit: int = 200_000,
    block: int = 65_536,
) -> Pairs:
    """Pairs of 64-bit codes within ``max_distance`` bits; with ``mirror_codes`` (the hash of
    each image's mirror image) a code also matches another image's mirror code. The similarity
    is ``1 - distance / 64`` of the closer of the two comparisons."""
    n = len(codes)
    if n < 2:
        return empty_pairs()
    database = int64_codes_to_bytes(codes)
    if mirror_codes is not None:
        database = np.concatenate([database, int64_codes_to_bytes(mirror_codes)])
    queries = int64_codes_to_bytes(codes)
    bits = 64
    if n <= exact_limit or max_distance >= 16:
        index = faiss.IndexBinaryFlat(bits)
    else:
        pieces = max_distance + 1
        index = faiss.IndexBinaryMultiHash(bits, pieces, bits // pieces)
    index.add(database)
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, block):
        # binary range search keeps distances strictly below the radius
        lims, dists, ids = index.range_search(queries[start : start + block], max_distance + 1)
        counts = np.diff(lims).astype(np.int64)
        out_i.append(np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts))
        out_j.append(ids.astype(np.int64) % n)  # a mirror code stands for its image
        out_d.append(dists.astype(np.float32))
    i, j, dist = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
    return canonical_pairs(i, j, 1.0 - dist / bits)
