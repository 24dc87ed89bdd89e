"""Similarity search for near-duplicates: embeddings by cosine, perceptual hashes by Hamming.

Embeddings (L2-normalised, so inner product = cosine):

* up to ``exact_limit`` vectors: faiss ``IndexFlatIP`` range search, exact, in query blocks so
  the result lists stay bounded;
* above it: a forest of hierarchical k-means trees (:func:`forest_cosine_pairs`), O(n log n):
  pairs sharing a leaf in any tree, each checked exactly; its recall against exact search is
  measured on a sample with :func:`measure_recall`. An IVF index with ~sqrt(n) lists, what this
  replaced, costs n^1.5 (every vector is compared with every list's centroid) and was 2-5x
  slower at 32k-128k vectors; faiss's HNSW was slower still on one core.

Perceptual hashes (64 bits): faiss ``IndexBinaryFlat`` range search up to ``exact_limit``
codes, then ``IndexBinaryMultiHash`` (multi-index hashing, Norouzi et al. 2012): the code is
split into ``m`` pieces, and two codes within ``d`` bits have, by the pigeonhole principle, a
piece within ``d // m`` bits, so probing every key within that many flips of each of the
query's pieces finds them all: exact, only faster. :func:`multi_hash_layout` chooses ``m`` for
the database's size: more, shorter pieces need fewer probes but their buckets fill up as the
corpus grows (5 pieces of 12 bits hold ~2,000 codes a bucket at 1M images, and the search grew
quadratically: the 1M duplicate build took 22 minutes, 4 with the layout chosen); fewer,
longer pieces keep the buckets near-empty at the price of probing their flips. Mirror-image and
turned hashes are added to the database so a flipped or rotated copy is found as well.

Every function returns pairs as three aligned arrays ``(i, j, similarity)`` with ``i < j``,
one row per pair, sorted, so results do not depend on faiss thread scheduling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from fineharbor.core.distributed.tasks import TaskEngine, map_tasks

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


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


def _range_search_blocks(index: faiss.Index, queries: np.ndarray, threshold: float, block: int):
    """faiss returns IP strictly above the radius; search just below it and filter with >=."""
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(queries), block):
        lims, sims, ids = index.range_search(queries[start : start + block], radius)
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


@dataclass(frozen=True)
class ForestParams:
    """Shape of the k-means forest of :func:`forest_cosine_pairs`.

    Defaults measured on 4k-128k clustered 128-d vectors at cosine >= 0.9 (bench/dedup.py):
    one tree finds 79-94% of the pairs, 4 trees 99.8%, 6 trees all of them.
    """

    trees: int = 6
    leaf_size: int = 256
    branching: int = 16
    kmeans_iterations: int = 10
    seed: int = 0


def _split(x: np.ndarray, k: int, params: ForestParams, seed: int) -> np.ndarray:
    """Child (0..k-1) of each row: the nearest of k k-means centroids. faiss trains on at most
    64 points per centroid, which keeps a node's cost linear in its size."""
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=params.kmeans_iterations,
        seed=seed,
        max_points_per_centroid=64,
        min_points_per_centroid=1,
    )
    kmeans.train(x)
    centroids = kmeans.centroids
    # nearest centroid in L2 = largest x.c - |c|^2 / 2; one matrix product, no index
    scores = x @ centroids.T - 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    return scores.argmax(axis=1)


def kmeans_tree_leaves(x: np.ndarray, params: ForestParams, seed: int) -> list[np.ndarray]:
    """Row indices of the leaves of one hierarchical k-means tree: every node larger than
    ``leaf_size`` is split into up to ``branching`` children by the nearest centroid, until the
    leaves hold ``leaf_size`` rows or fewer (or rows k-means cannot tell apart: identical
    vectors stay in one, larger leaf). Depth ~ log_branching(n / leaf_size), so n log n work."""
    rng = np.random.default_rng(seed)
    leaves: list[np.ndarray] = []
    pending = [np.arange(len(x))]
    while pending:
        members = pending.pop()
        if len(members) <= params.leaf_size:
            leaves.append(members)
            continue
        k = min(params.branching, math.ceil(len(members) / params.leaf_size))
        rows = x if len(members) == len(x) else x[members]  # the root needs no copy
        child = _split(rows, k, params, int(rng.integers(2**31 - 1)))
        counts = np.bincount(child, minlength=k)
        if counts.max() == len(members):
            leaves.append(members)
            continue
        order = np.argsort(child, kind="stable")
        pending.extend(g for g in np.split(members[order], np.cumsum(counts)[:-1]) if len(g))
    return leaves


def _leaf_pairs(x: np.ndarray, members: np.ndarray, threshold: float) -> Pairs:
    if len(members) > 4096:  # an unsplittable leaf of near-identical vectors: blocked search
        i, j, sim = exact_cosine_pairs(x[members], threshold)
        return members[i], members[j], sim
    leaf = x[members]
    sims = leaf @ leaf.T
    i, j = np.nonzero(np.triu(sims >= threshold, 1))
    return members[i], members[j], sims[i, j]


def _leaves_pairs(leaves: list[np.ndarray], x: np.ndarray, threshold: float) -> Pairs:
    """One task: the pairs of a chunk of leaves, as one set of arrays (in leaf order)."""
    out = [_leaf_pairs(x, members, threshold) for members in leaves]
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))  # type: ignore[return-value]


def leaf_chunks(leaves: list[np.ndarray], rows: int) -> list[list[np.ndarray]]:
    """Consecutive leaves grouped into chunks of about ``rows`` rows: tasks, not one task per
    small leaf."""
    chunks: list[list[np.ndarray]] = []
    size = rows
    for members in leaves:
        if size + len(members) > rows and size:
            chunks.append([])
            size = 0
        chunks[-1].append(members)
        size += len(members)
    return chunks


def forest_cosine_pairs(
    vectors: np.ndarray,
    threshold: float,
    params: ForestParams | None = None,
    engine: TaskEngine | None = None,
) -> Pairs:
    """Pairs with cosine >= ``threshold``, approximately, in O(n log n): the pairs of vectors
    that share a leaf in at least one of ``params.trees`` hierarchical k-means trees, each
    trained on other random samples, checked exactly by one matrix product per leaf.

    Each tree's leaf products run as tasks of about ``engine.task_rows`` rows on ``engine``
    (default: local; Ray when the stage runs there), the vectors shared once; the pairs are
    the same either way.

    A true pair is missed only when a cell boundary falls between its two vectors in every
    tree; near duplicates sit so close together that this is rare, and
    :func:`measure_recall` says how rare on the data at hand. SemDeDup (Abbas et al. 2023)
    compares vectors within k-means clusters; several randomised trees are FLANN's answer to
    the pairs a single partition cuts (Muja & Lowe 2014).
    """
    params = params or ForestParams()
    engine = engine or TaskEngine()
    x = _as_float32(vectors)
    if len(x) < 2:
        return empty_pairs()
    shared = (engine.share(x), threshold)  # the vectors go to Ray's object store once
    out = []
    for tree in range(params.trees):  # one tree's leaves in memory at a time
        leaves = [m for m in kmeans_tree_leaves(x, params, params.seed + tree) if len(m) > 1]
        chunks = leaf_chunks(leaves, engine.task_rows)
        out += map_tasks(_leaves_pairs, chunks, engine=engine, shared=shared)
    if not out:
        return empty_pairs()
    return canonical_pairs(*(np.concatenate(parts) for parts in zip(*out, strict=True)))


def cosine_pairs(
    vectors: np.ndarray,
    threshold: float,
    *,
    exact_limit: int = 10_000,
    forest: ForestParams | None = None,
    engine: TaskEngine | None = None,
) -> Pairs:
    """Pairs with cosine >= ``threshold``: exact up to ``exact_limit`` vectors, the k-means
    forest above, its leaves on ``engine`` (see :func:`measure_recall` for what that costs)."""
    if len(vectors) <= exact_limit:
        return exact_cosine_pairs(vectors, threshold)
    return forest_cosine_pairs(vectors, threshold, forest, engine)


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
    """Recall of an approximate pair search against exact search on sampled vectors."""

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
    pairs: Pairs,
    *,
    sample: int = 1000,
    seed: int = 0,
) -> RecallReport:
    """Share of the true neighbours (cosine >= threshold, exact NumPy search against all
    vectors) of ``sample`` random vectors that ``pairs`` (a search's result) holds."""
    started = time.perf_counter()
    x = _as_float32(vectors)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))
    exact: set[tuple[int, int]] = set()
    block = max(1, min(256, (1 << 24) // len(x)))  # a similarity block of <= 64 MB
    for start in range(0, len(picked), block):
        sims = x[picked[start : start + block]] @ x.T
        rows, cols = np.nonzero(sims >= threshold)
        exact.update(
            (int(picked[start + r]), int(c))
            for r, c in zip(rows, cols, strict=True)
            if picked[start + r] != c
        )
    i, j, _ = pairs
    found: set[tuple[int, int]] = set()
    for a, b in ((i, j), (j, i)):
        mine = np.isin(a, picked)
        found.update(zip(a[mine].tolist(), b[mine].tolist(), strict=True))
    hits = len(exact & found)
    return RecallReport(len(picked), len(exact), hits, time.perf_counter() - started)


# --------------------------------------------------------------------------- binary codes


def _faiss_bytes(codes: np.ndarray, turn: int) -> np.ndarray:
    """(n,) int64 codes rotated right by ``turn`` bits, as the (n, 8) little-endian bytes faiss
    reads: faiss's bit ``k`` is then the code's bit ``turn + k``, so a hash table over the first
    ``b`` bits indexes the code's bits ``turn .. turn + b - 1``."""
    unsigned = codes.view(np.uint64)
    if turn:
        unsigned = (unsigned >> np.uint64(turn)) | (unsigned << np.uint64(64 - turn))
    return np.ascontiguousarray(unsigned, dtype="<u8").view(np.uint8).reshape(-1, 8)


@dataclass(frozen=True)
class MultiHashLayout:
    """``pieces`` hash tables over ``piece_bits``-bit pieces of the code, each probed with every
    key within ``flips`` bit flips of the query's piece."""

    pieces: int
    piece_bits: int
    flips: int

    def probes(self) -> int:
        return self.pieces * sum(math.comb(self.piece_bits, k) for k in range(self.flips + 1))

    def cost(self, database: int) -> float:
        """Work per query, in units of one candidate checked: probes cost about twice a
        candidate (measured at 300k images: 61 ns a candidate, 123 ns a probe), and a probe
        meets ``database / 2**piece_bits`` candidates (codes spread over the keys)."""
        return self.probes() * (2.0 + database / 2.0**self.piece_bits)


def multi_hash_layout(database: int, max_distance: int, bits: int = 64) -> MultiHashLayout | None:
    """The cheapest exact multi-index layout for ``database`` codes: ``m`` pieces of
    ``bits // m`` bits probed within ``max_distance // m`` flips (``m * (flips + 1) >
    max_distance``: pigeonhole), from one piece (exact matches: a plain hash table) to pieces
    of 4 bits. None when the flat search is cheaper (large distances for 64 bits)."""
    layouts = [
        MultiHashLayout(m, bits // m, max_distance // m)
        for m in range(1, min(max_distance + 1, bits // 4) + 1)
    ]
    practical = [x for x in layouts if x.probes() <= 100_000]
    best = min(practical, key=lambda x: (x.cost(database), x.pieces), default=None)
    # the flat search compares a query with every code at ~0.4 ns (SIMD popcount), 1/150 of
    # a candidate of the hash tables: cheaper when the distance is large for the code length
    if best is None or best.cost(database) > database / 150:
        return None
    return best


def hamming_pairs(
    codes: np.ndarray,
    max_distance: int,
    *,
    variant_codes: Sequence[np.ndarray] = (),
    exact_limit: int = 10_000,
    block: int = 65_536,
) -> Pairs:
    """Pairs of 64-bit codes within ``max_distance`` bits. ``variant_codes`` are more codes of
    each image (its mirror image's hash, its rotations' hashes: one array of ``n`` codes per
    variant); a code also matches another image's variant code. The similarity is
    ``1 - distance / 64`` of the closest comparison."""
    n = len(codes)
    if n < 2:
        return empty_pairs()
    bits = 64
    database = np.concatenate([np.asarray(c, np.int64) for c in (codes, *variant_codes)])
    layout = None if n <= exact_limit else multi_hash_layout(len(database), max_distance)
    out_i, out_j, out_d = [], [], []
    # one hash table at a time: a table over the piece turned to the code's first bits (a
    # rotation keeps every Hamming distance), so only one piece's buckets are ever in memory
    for piece in range(layout.pieces if layout else 1):
        if layout is None:
            index = faiss.IndexBinaryFlat(bits)
        else:
            index = faiss.IndexBinaryMultiHash(bits, 1, layout.piece_bits)
            index.nflip = layout.flips
        turn = piece * layout.piece_bits if layout else 0
        index.add(_faiss_bytes(database, turn))
        queries = _faiss_bytes(np.asarray(codes, np.int64), turn)
        for start in range(0, n, block):
            # binary range search keeps distances strictly below the radius
            lims, dists, ids = index.range_search(queries[start : start + block], max_distance + 1)
            counts = np.diff(lims).astype(np.int64)
            out_i.append(np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts))
            out_j.append(ids.astype(np.int64) % n)  # a variant code stands for its image
            out_d.append(dists.astype(np.float32))
        del index, queries
    i, j, dist = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
    return canonical_pairs(i, j, 1.0 - dist / bits)
