"""Cross-source duplicate clusters: signals -> pairs -> union-find -> one kept member each.

Every signal yields pairs of samples with a similarity:

==================  ==============================================  ======================
signal              pairs                                           similarity
==================  ==============================================  ======================
``exact_pixels``    images with the same decoded pixels             1.0
``url_caption``     same normalised http(s) URL + caption (LAION)   1.0
``text_exact``      text-only samples and interleaved documents     1.0
                    with the same normalised text
``copy_embedding``  copy-detection cosine >= ``copy_threshold``     cosine
``phash``           phash (or mirror phash) within the distance     1 - hamming / 64
``clip_embedding``  CLIP cosine >= ``clip_threshold`` (off)         cosine
``text_minhash``    text-only samples and documents, shingle        Jaccard
                    Jaccard >= threshold
==================  ==============================================  ======================

Copy-embedding and phash candidates are verified by aligning the two images' pixels when the
caller can load them (:mod:`~fineharbor.core.dedup.verify`): global descriptors also match
look-alikes, the alignment does not. Samples of ``near_duplicate_exempt_sources`` are not
near-matched among themselves (GUI screens). Image pairs become sample pairs (a sample is a
duplicate when one of its images is). Pairs are unioned into clusters (DanQing), and the keep
policy picks one member per cluster. Every member
is reported with the strongest edge linking it to the kept member, or, when it reached the
cluster only through others, its strongest edge to any neighbour. "Strongest" orders signals as
listed above (exact before near), then by similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.dedup.params import DedupParams
from fineharbor.core.dedup.search import (
    ForestParams,
    Pairs,
    canonical_pairs,
    cosine_pairs,
    empty_pairs,
    hamming_pairs,
    measure_recall,
)
from fineharbor.core.dedup.text import minhash_pairs, text_key, url_caption_key
from fineharbor.core.dedup.union_find import cluster_id, components
from fineharbor.core.dedup.verify import (
    BatchMapper,
    ImageKey,
    PairVerifier,
    ThumbnailLoader,
    VerifyConfig,
    default_workers,
)
from fineharbor.core.distributed.tasks import TaskEngine, task_mapper

EXACT_PIXELS = "exact_pixels"
URL_CAPTION = "url_caption"
TEXT_EXACT = "text_exact"
COPY = "copy_embedding"
PHASH = "phash"
CLIP = "clip_embedding"
TEXT_MINHASH = "text_minhash"
SIGNALS = (EXACT_PIXELS, URL_CAPTION, TEXT_EXACT, COPY, PHASH, CLIP, TEXT_MINHASH)
_RANK = {signal: rank for rank, signal in enumerate(SIGNALS)}

DUPLICATE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("cluster_id", pa.string(), nullable=False),
        pa.field("cluster_size", pa.int32(), nullable=False),
        pa.field("kept_sample_id", pa.string(), nullable=False),
        pa.field("is_kept", pa.bool_(), nullable=False),
        pa.field("signal", pa.string(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
        pa.field("matched_sample_id", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Edges:
    """Sample edges as aligned arrays: nodes ``a``/``b``, the signal's rank in ``SIGNALS``
    (smaller is stronger: exact signals first) and the similarity."""

    a: np.ndarray
    b: np.ndarray
    rank: np.ndarray
    similarity: np.ndarray

    @staticmethod
    def concat(parts: Iterable[Edges]) -> Edges:
        parts = list(parts)
        if not parts:
            return Edges(*(np.zeros(0, t) for t in (np.int64, np.int64, np.int8, np.float32)))
        return Edges(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("a", "b", "rank", "similarity")
            )
        )

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.rank, minlength=len(SIGNALS))
        return {SIGNALS[r]: int(found[r]) for r in np.argsort(SIGNALS) if found[r]}


# --------------------------------------------------------------------------- inputs


@dataclass
class _Images:
    """Valid signature rows, sorted by (sample_id, image_index), mapped to sample nodes."""

    table: pa.Table  # without the embedding columns
    node: np.ndarray  # sample node of each image row
    # the embedding columns, left in read order: sorting them would copy the largest columns
    # (see docs/scale.md); ``order[k]`` is the read-order row of sorted row k
    vectors: dict[str, pa.ChunkedArray]
    order: np.ndarray


def _sample_nodes(samples: pa.Table) -> pa.Array:
    """The sorted sample ids; a sample's node is its position."""
    ids = samples.column("sample_id").combine_chunks()
    if pc.count_distinct(ids).as_py() != len(ids):
        raise ValueError("samples has repeated sample_id values")
    return ids


def _release_arrow_memory() -> None:
    """Hand Arrow's freed pages back to the OS: NumPy allocates through another allocator,
    so pages Arrow keeps cached would add to the peak instead of being reused."""
    pa.default_memory_pool().release_unused()


def _image_rows(signatures: pa.Table, ids: pa.Array) -> _Images:
    """Decodable images of known samples. Signatures of samples absent from ``samples`` (dropped
    by an earlier stage) are ignored: they cannot be kept or removed here."""
    table = signatures
    if "error" in table.column_names:
        table = table.filter(pc.is_null(table.column("error")))
    known = pc.is_in(table.column("sample_id"), value_set=ids)
    if not pc.all(known).as_py():
        table = table.filter(known)
    keys = [("sample_id", "ascending"), ("image_index", "ascending")]
    order = pc.sort_indices(table.select(["sample_id", "image_index"]), sort_keys=keys)
    embedded = [c for c in (COPY, CLIP) if c in table.column_names]
    vectors = {c: table.column(c) for c in embedded}
    table = table.drop_columns(embedded).take(order)
    _release_arrow_memory()
    nodes = pc.index_in(table.column("sample_id"), value_set=ids)
    return _Images(
        table,
        nodes.to_numpy(zero_copy_only=False).astype(np.int64),
        vectors,
        order.to_numpy().astype(np.int64),
    )


def gather_vectors(
    column: pa.ChunkedArray, rows: np.ndarray, dtype=np.float32, block: int = 16_384
) -> np.ndarray:
    """The vectors of ``rows`` (non-null rows of a list<float> column) as one contiguous
    (len(rows), d) ``dtype`` matrix, gathered from each chunk's values buffer."""
    bounds = np.cumsum([0, *(len(chunk) for chunk in column.chunks)])
    which = np.searchsorted(bounds, rows, side="right") - 1
    out, dim = None, None
    for number, chunk in enumerate(column.chunks):
        here = np.flatnonzero(which == number)
        if here.size == 0:
            continue
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy(zero_copy_only=False)
        for start in range(0, here.size, block):
            part = here[start : start + block]
            local = rows[part] - bounds[number]
            begin, lengths = offsets[local], offsets[local + 1] - offsets[local]
            dim = int(lengths[0]) if dim is None else dim
            if (lengths != dim).any():
                raise ValueError("embeddings of different lengths")
            if out is None:
                out = np.empty((rows.size, dim), dtype)
            out[part] = values[begin[:, None] + np.arange(dim)]
    return out if out is not None else np.zeros((0, 0), dtype)


def list_matrix(array: pa.Array | pa.ChunkedArray, dtype=np.float32) -> np.ndarray:
    """The non-null vectors of a list<float> column as one contiguous (n, d) ``dtype`` matrix,
    read from each chunk's values buffer (no Python floats); every vector must have d values."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    parts, dim = [], None
    for chunk in chunks:
        if chunk.null_count:
            chunk = chunk.filter(chunk.is_valid())
        if len(chunk) == 0:
            continue
        offsets = chunk.offsets.to_numpy()
        lengths = np.diff(offsets)
        dim = int(lengths[0]) if dim is None else dim
        if (lengths != dim).any():
            raise ValueError("embeddings of different lengths")
        flat = chunk.values.slice(offsets[0], offsets[-1] - offsets[0])
        parts.append(flat.to_numpy(zero_copy_only=False).reshape(len(chunk), dim))
    if not parts:
        return np.zeros((0, 0), dtype)
    out = np.empty((sum(len(p) for p in parts), dim), dtype)
    np.concatenate(parts, out=out, casting="same_kind")
    return out


def _group_pairs(keys: list[str | None] | pa.Array | pa.ChunkedArray) -> Pairs:
    """Star pairs (first member, other member) for every key shared by 2+ positions; nulls
    match nothing. Vectorised: the keys are dictionary-encoded and sorted by (key, position)."""
    keys = keys if isinstance(keys, pa.Array | pa.ChunkedArray) else pa.array(keys, pa.string())
    if len(keys) < 2:
        return empty_pairs()
    encoded = pc.dictionary_encode(keys)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks()
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    positions = np.flatnonzero(codes >= 0)
    order = positions[np.argsort(codes[positions], kind="stable")]
    grouped = codes[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = grouped[1:] != grouped[:-1]
    leader = order[first][np.cumsum(first) - 1]
    others = ~first
    if not others.any():
        return empty_pairs()
    i, j = leader[others], order[others]
    return canonical_pairs(i, j, np.ones(i.size, np.float32))


def _to_nodes(pairs: Pairs, node: np.ndarray, signal: str) -> Edges:
    """Image (or subset) positions -> sample edges, dropping pairs inside one sample."""
    i, j, sim = pairs
    a, b = node[i], node[j]
    keep = a != b
    rank = np.full(int(keep.sum()), _RANK[signal], dtype=np.int8)
    return Edges(a[keep], b[keep], rank, np.asarray(sim, np.float32)[keep])


def _verify_with_embedding(
    pairs: Pairs, positions: np.ndarray, vectors: np.ndarray, min_cosine: float
) -> Pairs:
    """Drop pairs whose images both have a copy embedding and disagree with the hash."""
    if positions.size == 0 or pairs[0].size == 0:
        return pairs
    top = max(positions.max(), pairs[0].max(), pairs[1].max())
    row_of = np.full(int(top) + 1, -1, dtype=np.int64)
    row_of[positions] = np.arange(positions.size)
    ri, rj = row_of[pairs[0]], row_of[pairs[1]]
    both = (ri >= 0) & (rj >= 0)
    cosine = np.ones(ri.size, dtype=np.float32)
    cosine[both] = np.einsum("ij,ij->i", vectors[ri[both]], vectors[rj[both]])
    keep = ~both | (cosine >= min_cosine)
    return pairs[0][keep], pairs[1][keep], pairs[2][keep]


def _near_pairs(pairs: Pairs, node: np.ndarray, exempt: np.ndarray) -> Pairs:
    """Image pairs that can become sample edges: not inside one sample, and not both from
    sources exempt from near-duplicate matching."""
    i, j, sim = pairs
    a, b = node[i], node[j]
    keep = (a != b) & ~(exempt[a] & exempt[b])
    return i[keep], j[keep], sim[keep]


def _take_embeddings(images: _Images, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted row positions with a vector, their float32 matrix) of an embedding column, which
    ``images`` then lets go of: the matrix is the only copy held while it is searched."""
    values = images.vectors.pop(column, None)
    if values is None:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)[images.order]
    positions = np.flatnonzero(valid)
    try:
        matrix = gather_vectors(values, images.order[positions], np.float32)
    except ValueError as error:
        raise ValueError(f"{column}: {error}") from None
    del values
    _release_arrow_memory()
    return positions, matrix


def _cosine_candidates(
    images: _Images,
    column: str,
    threshold: float,
    params: DedupParams,
    searches: dict,
    engine: TaskEngine | None,
):
    """Candidate pairs of one embedding column; ``searches[column]`` says how they were found,
    with the recall of the k-means forest (1,000 sampled vectors) when it was used."""
    rows, vectors = _take_embeddings(images, column)
    if rows.size < 2:
        return empty_pairs(), rows, vectors
    i, j, sim = cosine_pairs(
        vectors,
        threshold,
        exact_limit=params.exact_search_limit,
        forest=ForestParams(trees=params.forest_trees, leaf_size=params.forest_leaf_size),
        engine=engine,
    )
    search: dict = {"vectors": int(rows.size), "method": "exact", "pairs": int(i.size)}
    if rows.size > params.exact_search_limit:
        recall = measure_recall(vectors, threshold, (i, j, sim), sample=1000)
        search |= {
            "method": f"kmeans_forest ({params.forest_trees} trees)",
            "recall": round(recall.recall, 4),
            "recall_sampled_vectors": recall.queries,
            "recall_exact_neighbours": recall.exact_neighbours,
        }
    searches[column] = search
    return (rows[i], rows[j], sim), rows, vectors


def _turn_codes(rows: pa.Table, codes: np.ndarray) -> list[np.ndarray]:
    """The six rotated/upside-down phashes (``phash_dihedral``) as six arrays of n codes; an
    image without them repeats its own phash (it matches nothing more)."""
    column = rows.column("phash_dihedral").combine_chunks()
    turns = np.repeat(codes[:, None], 6, axis=1)
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    full = np.flatnonzero(np.nan_to_num(lengths.astype(float), nan=0.0) == 6)
    if full.size:
        values = column.take(pa.array(full)).flatten().to_numpy(zero_copy_only=False)
        turns[full] = values.astype(np.int64).reshape(full.size, 6)
    return [np.ascontiguousarray(turns[:, k]) for k in range(6)]


def _phash_candidates(table: pa.Table, params: DedupParams) -> Pairs:
    if "phash" not in table.column_names:
        return empty_pairs()
    hashed = np.flatnonzero(table.column("phash").is_valid().to_numpy(zero_copy_only=False))
    if hashed.size < 2:
        return empty_pairs()
    # take() before to_numpy: a null would turn int64 into float64 and lose bits
    rows = table.take(pa.array(hashed))
    codes = rows.column("phash").to_numpy().astype(np.int64)
    variants = []
    if params.phash_flip and "phash_flip" in table.column_names:
        mirror = pc.coalesce(rows.column("phash_flip"), rows.column("phash")).to_numpy()
        variants.append(mirror.astype(np.int64))
    if params.phash_rotations and "phash_dihedral" in table.column_names:
        variants += _turn_codes(rows, codes)
    i, j, sim = hamming_pairs(
        codes,
        params.phash_max_distance,
        variant_codes=variants,
        exact_limit=params.binary_exact_limit,
    )
    return hashed[i], hashed[j], sim


def cap_per_item(pairs: Pairs, cap: int) -> tuple[Pairs, int]:
    """Keep a pair when it is among the ``cap`` most similar pairs of either of its items (ties:
    the smaller other item first), so at most ``cap`` pairs are kept per item; returns the kept
    pairs and the number dropped. Vectorised: one lexsort over both ends of every pair."""
    i, j, sim = pairs
    count = i.size
    if count == 0:
        return pairs, 0
    ends, others = np.concatenate([i, j]), np.concatenate([j, i])
    order = np.lexsort((others, -np.concatenate([sim, sim]), ends))
    sorted_ends = ends[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ends)) + 1]
    rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    keep = np.zeros(count, dtype=bool)
    keep[(order % count)[rank < cap]] = True
    return (i[keep], j[keep], sim[keep]), int(count - keep.sum())


def _pixel_verified(
    candidates: list[tuple[str, Pairs]], table: pa.Table, verifier: PairVerifier, counts: dict
) -> list[tuple[str, Pairs]]:
    """Keep the candidate pairs whose pixels align (one loader call for all of them);
    ``counts[signal]`` receives how many were verified and refuted."""
    ends = [np.concatenate([i, j]) for _, (i, j, _) in candidates]
    involved = np.unique(np.concatenate(ends)) if ends else np.zeros(0, np.int64)
    picked = table.select(["sample_id", "image_index"]).take(pa.array(involved))
    keys = dict(
        zip(
            involved.tolist(),
            zip(
                picked.column("sample_id").to_pylist(),
                picked.column("image_index").to_pylist(),
                strict=True,
            ),
            strict=True,
        )
    )

    def key(position: int) -> ImageKey:
        sample_id, index = keys[position]
        return (sample_id, int(index))

    flat = [
        (key(a), key(b))
        for _, (i, j, _) in candidates
        for a, b in zip(i.tolist(), j.tolist(), strict=True)
    ]
    verdicts = iter(verifier.check(flat))
    out = []
    for signal, (i, j, sim) in candidates:
        keep = np.fromiter((next(verdicts) for _ in range(i.size)), dtype=bool, count=i.size)
        counts[signal] |= {"verified": int(keep.sum()), "refuted": int(i.size - keep.sum())}
        out.append((signal, (i[keep], j[keep], sim[keep])))
    return out


def image_edges(
    images: _Images,
    params: DedupParams,
    exempt: np.ndarray,
    verifier: PairVerifier | None = None,
    searches: dict | None = None,
    counts: dict | None = None,
    engine: TaskEngine | None = None,
) -> list[Edges]:
    """Edges from image signatures; ``exempt[node]`` marks samples of exempt sources;
    ``searches`` (when given) receives how each embedding column was searched, ``counts`` the
    candidate pairs per signal: proposed, dropped by the per-item cap, refuted by the copy
    embedding (phash), verified and refuted by the pixels.

    Copy-detection and perceptual-hash candidates are capped per image
    (``max_candidates_per_item``) and checked by ``verifier`` (pixel alignment) when one is
    given; CLIP pairs are semantic by intent and are not. The embedding searches run their
    tasks on ``engine`` (local when None).
    """
    node = images.node
    searches = {} if searches is None else searches
    counts = {} if counts is None else counts
    edges: list[Edges] = []
    if params.exact_pixels and "sha256_pixels" in images.table.column_names:
        keys = images.table.column("sha256_pixels")
        edges.append(_to_nodes(_group_pairs(keys), node, EXACT_PIXELS))
    candidates: list[tuple[str, Pairs]] = []
    copy_rows, copy_vectors = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    if params.copy_embedding:
        pairs, copy_rows, copy_vectors = _cosine_candidates(
            images, COPY, params.copy_threshold, params, searches, engine
        )
        candidates.append((COPY, _near_pairs(pairs, node, exempt)))
    elif params.phash and params.phash_verify_min_cosine is not None:
        copy_rows, copy_vectors = _take_embeddings(images, COPY)
    if params.phash:
        pairs = _near_pairs(_phash_candidates(images.table, params), node, exempt)
        proposed = pairs[0].size
        if params.phash_verify_min_cosine is not None:
            pairs = _verify_with_embedding(
                pairs, copy_rows, copy_vectors, params.phash_verify_min_cosine
            )
        candidates.append((PHASH, pairs))
        counts[PHASH] = {
            "proposed": proposed,
            "refuted_by_copy_embedding": proposed - pairs[0].size,
        }
    del copy_rows, copy_vectors  # the largest thing held: freed before the CLIP search
    for position, (signal, pairs) in enumerate(candidates):
        counts.setdefault(signal, {"proposed": int(pairs[0].size)})
        if params.max_candidates_per_item is not None:
            pairs, dropped = cap_per_item(pairs, params.max_candidates_per_item)
            counts[signal]["capped"] = dropped
            candidates[position] = (signal, pairs)
    if verifier is not None:
        candidates = _pixel_verified(candidates, images.table, verifier, counts)
    for signal, pairs in candidates:
        edges.append(_to_nodes(pairs, node, signal))
    if params.clip_embedding:
        pairs, _, _ = _cosine_candidates(
            images, CLIP, params.clip_threshold, params, searches, engine
        )
        edges.append(_to_nodes(_near_pairs(pairs, node, exempt), node, CLIP))
    return edges


def sample_edges(samples: pa.Table, params: DedupParams) -> list[Edges]:
    nodes = np.arange(samples.num_rows, dtype=np.int64)
    texts = samples.column("text").to_pylist()
    edges: list[Edges] = []
    if params.url_caption:
        uris = samples.column("origin_uri").to_pylist()
        keys = [url_caption_key(u, t) for u, t in zip(uris, texts, strict=True)]
        edges.append(_to_nodes(_group_pairs(keys), nodes, URL_CAPTION))
    n_images = samples.column("n_images").to_numpy(zero_copy_only=False)
    textual = np.nan_to_num(n_images.astype(float), nan=0.0) == 0
    if "document" in samples.column_names:  # documents: per image and per document text
        textual |= samples.column("document").fill_null(False).to_numpy(zero_copy_only=False)
    text_only = np.flatnonzero(textual)
    if text_only.size > 1:
        only_texts = [texts[k] for k in text_only]
        if params.text_exact:
            pairs = _group_pairs([text_key(t) for t in only_texts])
            edges.append(_to_nodes(pairs, text_only, TEXT_EXACT))
        if params.text_minhash:
            pairs = minhash_pairs(
                only_texts,
                threshold=params.minhash_threshold,
                num_perm=params.minhash_num_perm,
                shingle_size=params.shingle_size,
                min_words=params.minhash_min_words,
            )
            edges.append(_to_nodes(pairs, text_only, TEXT_MINHASH))
    return edges


# --------------------------------------------------------------------------- keep policy


def keep_rank_keys(
    samples: pa.Table,
    priorities: Mapping[str, int],
    keep_order: tuple[str, ...],
    max_pixels: np.ndarray | None = None,
) -> list[tuple]:
    """Per sample, a sort key where the smallest key is the member to keep.

    Sources missing from ``priorities`` count as priority 0; missing resolution or quality
    loses against any known value. The sample_id closes every tie.
    """
    sources = samples.column("source").to_pylist()
    ids = samples.column("sample_id").to_pylist()
    pixels = (
        max_pixels
        if max_pixels is not None
        else samples.column("max_pixels").to_numpy(zero_copy_only=False)
    )
    quality = samples.column("quality").to_numpy(zero_copy_only=False)
    keys = []
    for k in range(samples.num_rows):
        key: list = []
        for criterion in keep_order:
            if criterion == "priority":
                key.append(-int(priorities.get(sources[k], 0)))
            elif criterion == "resolution":
                value = pixels[k]
                key.append(-float(value) if value == value and value is not None else np.inf)
            elif criterion == "quality":
                value = quality[k]
                key.append(-float(value) if value == value and value is not None else np.inf)
        key.append(ids[k])
        keys.append(tuple(key))
    return keys


def _max_pixels(samples: pa.Table, images: _Images) -> np.ndarray:
    """The samples' ``max_pixels``, filled from signature sizes where the column is null."""
    pixels = samples.column("max_pixels").to_numpy(zero_copy_only=False).astype(float)
    table = images.table
    if "width" in table.column_names and table.num_rows:
        widths = table.column("width").to_numpy(zero_copy_only=False).astype(float)
        heights = table.column("height").to_numpy(zero_copy_only=False).astype(float)
        from_signatures = np.full(samples.num_rows, np.nan)
        area = np.nan_to_num(widths * heights, nan=-1.0)
        np.fmax.at(from_signatures, images.node, np.where(area >= 0, area, np.nan))
        pixels = np.where(np.isnan(pixels), from_signatures, pixels)
    return pixels


# --------------------------------------------------------------------------- clusters


def _best_edges(edges: Edges) -> Edges:
    """The strongest edge of every linked pair, oriented (lo, hi), sorted by (lo, hi)."""
    lo, hi = np.minimum(edges.a, edges.b), np.maximum(edges.a, edges.b)
    order = np.lexsort((-edges.similarity, edges.rank, hi, lo))
    lo, hi = lo[order], hi[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    best = order[first]
    return Edges(lo[first], hi[first], edges.rank[best], edges.similarity[best])


def clusters_table(
    ids: pa.Array,
    sources: pa.Array,
    edges: Edges,
    rank_keys: Callable[[np.ndarray], list[tuple]],
) -> pa.Table:
    """Union the edges and describe every member of every cluster (``DUPLICATE_SCHEMA``).

    ``ids`` are sorted, so a node's position orders it as its id does; ``rank_keys(nodes)``
    gives the keep-policy keys of those nodes (asked only for cluster members). Every member is
    reported with its strongest edge to the kept member, else to any neighbour (ties: the
    smaller neighbour id)."""
    best = _best_edges(edges)
    sets = components(len(ids), best.a, best.b, min_size=2)
    if not sets:
        return DUPLICATE_SCHEMA.empty_table()
    members = np.concatenate(sets)
    sizes = np.array([len(m) for m in sets], dtype=np.int64)
    cluster_of = np.full(len(ids), -1, dtype=np.int64)
    cluster_of[members] = np.repeat(np.arange(len(sets)), sizes)
    keys = rank_keys(members)
    kept = np.empty(len(sets), dtype=np.int64)
    start = 0
    for number, size in enumerate(sizes.tolist()):
        chosen = min(range(start, start + size), key=keys.__getitem__)
        kept[number] = members[chosen]
        start += size
    # both directions of every edge; per member the first link in (not to the kept member,
    # strength, neighbour) order is the one reported
    src = np.concatenate([best.a, best.b])
    dst = np.concatenate([best.b, best.a])
    rank = np.concatenate([best.rank, best.rank])
    sim = np.concatenate([best.similarity, best.similarity])
    indirect = dst != kept[cluster_of[src]]
    order = np.lexsort((dst, -sim, rank, indirect, src))
    first = np.ones(order.size, dtype=bool)
    first[1:] = src[order][1:] != src[order][:-1]
    link = order[first]  # one per member, ordered by member node
    by_member = np.full(len(ids), -1, dtype=np.int64)
    by_member[src[link]] = link
    member_ids = pc.take(ids, pa.array(members)).to_pylist()
    cids = []
    start = 0
    for size in sizes.tolist():
        cids.append(cluster_id(member_ids[start : start + size]))
        start += size
    clusters = np.repeat(np.arange(len(sets)), sizes)
    chosen = by_member[members]
    table = pa.table(
        {
            "sample_id": member_ids,
            "source": pc.take(sources, pa.array(members)),
            "cluster_id": pa.array([cids[c] for c in clusters.tolist()], pa.string()),
            "cluster_size": pa.array(sizes[clusters], pa.int32()),
            "kept_sample_id": pc.take(ids, pa.array(kept[clusters])),
            "is_kept": pa.array(members == kept[clusters]),
            "signal": pa.array([SIGNALS[r] for r in rank[chosen].tolist()], pa.string()),
            "similarity": pa.array(np.minimum(sim[chosen], np.float32(1.0)), pa.float32()),
            "matched_sample_id": pc.take(ids, pa.array(dst[chosen])),
        },
        schema=DUPLICATE_SCHEMA,
    )
    return table.sort_by([("cluster_id", "ascending"), ("sample_id", "ascending")])


def make_verifier(
    params: DedupParams, thumbnails: ThumbnailLoader | None, mapper: BatchMapper | None = None
) -> PairVerifier | None:
    if thumbnails is None or not params.verify_pixels:
        return None
    config = VerifyConfig(fine=params.verify_size, max_crop_area=params.verify_max_crop_area)
    return PairVerifier(
        thumbnails,
        config,
        min_ncc=params.verify_min_ncc,
        max_tile_residual=params.verify_max_tile_residual,
        max_detail_residual=params.verify_max_detail_residual,
        min_detail_contrast=params.verify_min_detail_contrast,
        detail_size=params.verify_detail_size,
        detail_budget_bytes=params.verify_detail_budget_mb * 2**20,
        batch_size=params.verify_batch_size,
        workers=params.verify_workers or default_workers(),
        mapper=mapper,
    )


class Duplicates(NamedTuple):
    """What :func:`find_duplicates` found: the clusters and how they were found."""

    table: pa.Table
    report: dict


def find_duplicates(
    signatures: pa.Table,
    samples: pa.Table,
    params: DedupParams,
    priorities: Mapping[str, int],
    thumbnails: ThumbnailLoader | None = None,
    engine: TaskEngine | None = None,
) -> Duplicates:
    """One ``DUPLICATE_SCHEMA`` row per sample that belongs to a duplicate cluster (``table``).

    ``signatures``: ``SIGNATURE_SCHEMA`` rows (extra columns ignored, embeddings optional).
    ``samples``: ``SAMPLE_SCHEMA`` rows (see :func:`~fineharbor.core.dedup.samples.
    compact_samples`) of every sample taking part. ``priorities``: source -> priority.
    ``thumbnails``: loads verification thumbnails for ``(sample_id, image_index)`` keys (see
    :func:`~fineharbor.core.dedup.verify.batches_thumbnail_loader`); with it, near-duplicate
    candidates are verified pixel by pixel (``params.verify_*``), without it they are not.
    ``engine``: where the global stage's tasks run; on Ray, the k-means forest's leaves and the
    verification batches are Ray tasks (locally, verification has its own process pool).

    Rows come sorted by (cluster_id, sample_id); the same inputs in any order give the same
    table. ``report`` holds edge counts per signal, candidate pairs per signal
    (``candidates``: proposed / capped / verified / refuted), the verification counts and how
    each embedding column was searched (``vector_search``).
    """
    samples = samples.sort_by([("sample_id", "ascending")])
    ids = _sample_nodes(samples)
    images = _image_rows(signatures, ids)
    del signatures  # the caller passes it unbound: the sorted rows are the only copy held
    exempt = pc.is_in(
        samples.column("source"),
        value_set=pa.array(list(params.near_duplicate_exempt_sources), pa.string()),
    ).to_numpy(zero_copy_only=False)
    mapper = task_mapper(engine) if engine is not None and engine.on_ray else None
    verifier = make_verifier(params, thumbnails, mapper)
    searches: dict = {}
    candidates: dict = {}
    edges = Edges.concat(
        [
            *image_edges(images, params, exempt, verifier, searches, candidates, engine),
            *sample_edges(samples, params),
        ]
    )
    pixels = _max_pixels(samples, images)
    del images

    def rank_keys(nodes: np.ndarray) -> list[tuple]:
        taken = pa.array(nodes)
        return keep_rank_keys(samples.take(taken), priorities, params.keep_order, pixels[nodes])

    table = clusters_table(ids, samples.column("source").combine_chunks(), edges, rank_keys)
    report = {
        "edges": edges.counts(),
        "candidates": candidates,
        "max_candidates_per_item": params.max_candidates_per_item,
        "verification": verifier.stats() if verifier is not None else None,
        "vector_search": searches,
    }
    return Duplicates(table, report)
