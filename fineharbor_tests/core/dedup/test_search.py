"""faiss searches agree with brute force; union-find; MinHash; URL keys; diversity."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.dedup import (
    CovarianceAccumulator,
    ForestParams,
    UnionFind,
    brute_force_cosine_pairs,
    cluster_id,
    cosine_pairs,
    diversity_score,
    exact_cosine_pairs,
    forest_cosine_pairs,
    hamming_pairs,
    measure_recall,
    minhash_pairs,
    normalise_url,
    text_key,
    url_caption_key,
)
from fineharbor.core.dedup.diversity import diversity_from_eigenvalues
from fineharbor.core.dedup.search import MultiHashLayout, kmeans_tree_leaves, multi_hash_layout
from fineharbor.core.signatures.hashing import hamming64


def _planted(n: int = 600, d: int = 32, pairs: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    for k in range(pairs):  # near copies at cosine ~0.97-0.99
        x[n - 1 - k] = x[k] + rng.standard_normal(d).astype(np.float32) * 0.15
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _as_set(pairs) -> set[tuple[int, int]]:
    return set(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9])
def test_faiss_range_search_equals_brute_force(threshold):
    x = _planted()
    exact = exact_cosine_pairs(x, threshold, block=97)  # odd block size exercises the blocking
    brute = brute_force_cosine_pairs(x, threshold, block=128)
    assert _as_set(exact) == _as_set(brute)
    assert np.allclose(exact[2], brute[2], atol=1e-5)
    assert (exact[0] < exact[1]).all() and (exact[2] >= threshold).all()


def test_threshold_is_inclusive():
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    assert _as_set(exact_cosine_pairs(x, 0.6)) == {(0, 1), (1, 2)}


def _clustered(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Vectors around 50 centres with copies planted at cosine 0.75-0.99."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    planted = n // 20
    noise = rng.uniform(0.1, 0.9, (planted, 1)).astype(np.float32)
    x[n - planted :] = x[:planted] + noise * rng.standard_normal((planted, d)).astype(
        np.float32
    ) / math.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True), planted


def test_kmeans_tree_partitions_rows_into_small_leaves():
    x, _ = _clustered(3000, 16)
    leaves = kmeans_tree_leaves(x, ForestParams(leaf_size=100), seed=0)
    assert np.array_equal(np.sort(np.concatenate(leaves)), np.arange(3000))
    assert max(len(leaf) for leaf in leaves) <= 100
    # identical vectors cannot be split: they stay together in one larger leaf
    same = np.repeat(x[:1], 300, axis=0)
    assert [len(leaf) for leaf in kmeans_tree_leaves(same, ForestParams(leaf_size=100), 0)] == [300]


# measured: 6 trees find 98.9% of the 3,488 pairs at 0.75 (many natural neighbours in 32-d),
# all 138 at 0.9; one tree 60% and 88%
@pytest.mark.parametrize(("threshold", "least_recall"), [(0.75, 0.98), (0.9, 0.99)])
def test_forest_finds_the_exact_pairs_and_its_recall_is_measured(threshold, least_recall):
    x, _ = _clustered(6000, 32)
    exact = _as_set(exact_cosine_pairs(x, threshold))
    forest = forest_cosine_pairs(x, threshold, ForestParams(leaf_size=64))
    found = _as_set(forest)
    assert found <= exact  # every pair is checked exactly: no false pairs
    assert len(found) >= least_recall * len(exact) and len(exact) >= 130
    assert (forest[2] >= threshold).all() and (forest[0] < forest[1]).all()
    report = measure_recall(x, threshold, forest, sample=6000)
    assert report.exact_neighbours == 2 * len(exact)  # each pair seen from both ends
    assert report.found == 2 * len(found)
    # one tree cuts some pairs apart, more trees find them
    one = _as_set(forest_cosine_pairs(x, threshold, ForestParams(trees=1, leaf_size=64)))
    assert len(one) < len(found)


def test_cosine_pairs_switches_to_the_forest_above_the_exact_limit():
    x, _ = _clustered(2000, 32)
    exact = _as_set(exact_cosine_pairs(x, 0.9))
    assert _as_set(cosine_pairs(x, 0.9, exact_limit=2000)) == exact
    approx = _as_set(cosine_pairs(x, 0.9, exact_limit=100, forest=ForestParams(leaf_size=50)))
    assert approx <= exact and len(approx) >= 0.95 * len(exact)


def test_measure_recall_counts_missing_pairs():
    x, _ = _clustered(2000, 32)
    i, j, sim = exact_cosine_pairs(x, 0.9)
    half = slice(0, len(i) // 2)
    report = measure_recall(x, 0.9, (i[half], j[half], sim[half]), sample=2000)
    assert report.exact_neighbours == 2 * len(i)
    assert report.found == 2 * (len(i) // 2)
    assert report.recall == pytest.approx((len(i) // 2) / len(i))


# --------------------------------------------------------------------------- hashes


def _brute_hamming(codes, limit, mirror=None) -> set[tuple[int, int]]:
    out = set()
    for i in range(len(codes)):
        for j in range(i + 1, len(codes)):
            d = hamming64(int(codes[i]), int(codes[j]))
            if mirror is not None:
                d = min(d, hamming64(int(codes[i]), int(mirror[j])))
                d = min(d, hamming64(int(mirror[i]), int(codes[j])))
            if d <= limit:
                out.add((i, j))
    return out


def test_hamming_search_equals_brute_force_and_uses_mirror_codes():
    rng = np.random.default_rng(1)
    codes = rng.integers(-(2**63), 2**63 - 1, size=300, dtype=np.int64)
    unsigned = codes.view(np.uint64)
    for k in range(20):  # copies of codes 0-19 with 0-5 bits flipped
        mask = np.uint64(0)
        for bit in rng.choice(64, size=k % 6, replace=False):
            mask |= np.uint64(1) << np.uint64(bit)
        unsigned[299 - k] = unsigned[k] ^ mask
    mirror = rng.integers(-(2**63), 2**63 - 1, size=300, dtype=np.int64)
    mirror[150] = codes[10]  # image 150 is a mirror image of image 10
    flat = hamming_pairs(codes, 4)
    assert _as_set(flat) == _brute_hamming(codes, 4)
    with_mirror = hamming_pairs(codes, 4, variant_codes=[mirror])
    assert (10, 150) in _as_set(with_mirror)
    multi = hamming_pairs(codes, 4, variant_codes=[mirror], exact_limit=10)  # multi-hash index
    assert _as_set(multi) == _as_set(with_mirror)
    i, j, sim = flat
    for a, b, s in zip(i, j, sim, strict=True):
        assert math.isclose(s, 1 - hamming64(int(codes[a]), int(codes[b])) / 64, abs_tol=1e-6)


def _codes_with_near_copies(n: int, seed: int, variants: int) -> tuple[np.ndarray, list]:
    """``n`` random codes, every 10th a copy of the one before with 0-8 bits flipped, and
    ``variants`` more random codes per image, one of which copies another image's code."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    unsigned = codes.view(np.uint64)
    for k in range(1, n, 10):
        mask = np.uint64(0)
        for bit in rng.choice(64, size=k % 9, replace=False):
            mask |= np.uint64(1) << np.uint64(bit)
        unsigned[k] = unsigned[k - 1] ^ mask
    extra = [rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64) for _ in range(variants)]
    if extra:
        extra[0][n // 2] = codes[3] ^ np.int64(0b11)  # image n/2 is a turned copy of image 3
    return codes, extra


@pytest.mark.parametrize(
    ("n", "variants", "distance", "layout"),
    [
        (3_000, 1, 0, MultiHashLayout(1, 64, 0)),
        (3_000, 1, 1, MultiHashLayout(2, 32, 0)),
        (3_000, 1, 2, MultiHashLayout(3, 21, 0)),
        (3_000, 1, 4, MultiHashLayout(5, 12, 0)),
        (20_000, 7, 4, MultiHashLayout(3, 21, 1)),  # 160k codes: buckets of 12 bits fill up
        (3_000, 1, 8, None),  # the flat search is cheaper
    ],
)
def test_multi_hash_layouts_find_what_the_flat_search_finds(n, variants, distance, layout):
    codes, extra = _codes_with_near_copies(n, seed=distance, variants=variants)
    assert multi_hash_layout(n * (1 + variants), distance) == layout
    flat = _as_set(hamming_pairs(codes, distance, variant_codes=extra, exact_limit=n))
    multi = _as_set(hamming_pairs(codes, distance, variant_codes=extra, exact_limit=10))
    assert multi == flat
    assert len(flat) >= n // 10 * min(distance + 1, 9) // 9  # the planted copies within reach
    if distance >= 2:
        assert (3, n // 2) in flat


def test_multi_hash_layout_keeps_buckets_small_as_the_corpus_grows():
    """1M images with 8 codes each: 12-bit pieces would hold ~2,000 codes a bucket; 3 pieces of
    21 bits probed with one flip are 25x cheaper. At FineVision's 17M images (136M codes), 2
    pieces of 32 bits probed with two flips."""
    small, million, finevision = (multi_hash_layout(n, 4) for n in (80_000, 8_000_000, 136_000_000))
    assert small == MultiHashLayout(5, 12, 0)
    assert million == MultiHashLayout(3, 21, 1)
    assert finevision == MultiHashLayout(2, 32, 2)
    assert MultiHashLayout(5, 12, 0).cost(8_000_000) > 25 * million.cost(8_000_000)
    for layout in (small, million, finevision):  # pigeonhole: every pair within 4 bits found
        assert layout.pieces * (layout.flips + 1) > 4


# --------------------------------------------------------------------------- union-find


def test_union_find_components_are_deterministic():
    pairs = [(0, 1), (5, 6), (1, 2), (6, 7), (9, 9), (2, 0)]
    uf = UnionFind(10)
    uf.union_pairs(pairs)
    assert uf.components() == [[0, 1, 2], [5, 6, 7]]
    shuffled = UnionFind(10)
    shuffled.union_pairs(reversed(pairs))
    assert shuffled.components() == uf.components()
    assert uf.find(2) == uf.find(0) != uf.find(5)
    assert uf.union(0, 5) and not uf.union(1, 7)
    assert uf.components(min_size=1)[0] == [0, 1, 2, 5, 6, 7]
    assert cluster_id(["b", "a"]) == cluster_id(["a", "b"]) != cluster_id(["a", "c"])


# --------------------------------------------------------------------------- text


def _story(seed: int, words: int = 120) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{k}" for k in range(3000)]
    return [vocabulary[int(i)] for i in rng.integers(0, len(vocabulary), words)]


def test_minhash_finds_near_duplicate_long_texts_only():
    base = _story(0)
    near = list(base)
    near[60] = "changed"  # one word: 5 of ~116 shingles differ, Jaccard ~0.92
    edited = list(base)
    for k in range(0, 120, 6):  # a word in every shingle changed: Jaccard ~0
        edited[k] = f"x{k}"
    texts = [" ".join(base), " ".join(_story(1)), " ".join(near), " ".join(edited), "short one"]
    i, j, sim = minhash_pairs(texts, threshold=0.8, min_words=50)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2)]
    assert 0.85 < sim[0] < 1.0
    assert minhash_pairs(texts[:1])[0].size == 0


def test_text_and_url_keys_normalise():
    assert text_key("Hello   WORLD\n") == text_key("hello world") is not None
    assert text_key("  ") is None
    assert (
        normalise_url("HTTP://Example.COM:80/a/B?z=1&a=2#frag") == "http://example.com/a/B?a=2&z=1"
    )
    assert normalise_url("https://x.org/") == "https://x.org"
    assert normalise_url("https://x.org:8443/p") == "https://x.org:8443/p"
    key = url_caption_key("https://Example.com/img.jpg", "A red Circle")
    assert key == url_caption_key("https://example.com/img.jpg#x", "a red   circle")
    assert key != url_caption_key("https://example.com/img.jpg", "a blue circle")
    assert url_caption_key("file:///data/img.jpg", "a red circle") is None
    assert url_caption_key(None, "a red circle") is None


# --------------------------------------------------------------------------- diversity


def test_diversity_of_hand_computed_eigenvalues():
    # λ = (2, 1, 1, 0): p = (1/2, 1/4, 1/4), H = 1.5 ln 2, erank = 2^1.5; PR = 16 / 6
    result = diversity_from_eigenvalues(np.array([2.0, 1.0, 1.0, 0.0]))
    assert math.isclose(result.effective_rank, 2**1.5, rel_tol=1e-12)
    assert math.isclose(result.participation_ratio, 16 / 6, rel_tol=1e-12)
    assert math.isclose(result.score, math.sqrt((2**1.5 / 4) * (16 / 6 / 4)), rel_tol=1e-12)


def test_diversity_of_embeddings():
    # four points on the axes of the plane: covariance (2/3) I, both ratios 2/2 = 1
    square = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float32)
    result = diversity_score(square)
    assert math.isclose(result.effective_rank, 2.0, rel_tol=1e-9)
    assert math.isclose(result.participation_ratio, 2.0, rel_tol=1e-9)
    assert math.isclose(result.score, 1.0, rel_tol=1e-9)
    # all variance on one axis of four: both ratios 1/4
    line = np.zeros((6, 4), dtype=np.float16)
    line[:, 0] = [1, -1, 2, -2, 3, -3]
    assert math.isclose(diversity_score(line).score, 0.25, rel_tol=1e-6)


def test_diversity_streams_from_signature_tables():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 8)).astype(np.float16)
    accumulator = CovarianceAccumulator()
    for start in range(0, 500, 128):
        block = [v.tolist() for v in vectors[start : start + 128]] + [None]
        accumulator.update_table(
            pa.table({"copy_embedding": pa.array(block, pa.list_(pa.float16()))})
        )
    streamed = accumulator.result()
    assert streamed.n == 500
    assert math.isclose(streamed.score, diversity_score(vectors).score, rel_tol=1e-9)
    np.testing.assert_allclose(
        np.sort(accumulator.eigenvalues()),
        np.sort(np.linalg.eigvalsh(np.cov(vectors.astype(np.float64).T))),
        rtol=1e-6,
        atol=1e-9,
    )


def test_diversity_matches_finevision_table():
    # FineVision: erank 359.22, PR 182.52 at d = 512 -> 0.500
    assert round(math.sqrt((359.22 / 512) * (182.52 / 512)), 3) == 0.500
