import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.concepts import (
    ConceptLevel,
    ConceptParams,
    balanced_sample,
    flatness,
    hierarchical_kmeans,
)
from fineharbor.core.concepts.sampling import allocate, find_cap


def skewed_points(n=2000, concepts=20, dim=16, seed=0):
    """Well separated concepts whose sizes halve one after another (a long tail)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(concepts, dim)) * 6
    weights = 0.6 ** np.arange(concepts)
    member = rng.choice(concepts, n, p=weights / weights.sum())
    return (centers[member] + rng.normal(size=(n, dim))).astype(np.float32), member


PARAMS = ConceptParams(
    levels=[
        ConceptLevel(n_clusters=40, n_resamples=2, sample_size=8),
        ConceptLevel(n_clusters=8, n_resamples=2, sample_size=3),
    ],
    n_iters=20,
)


def test_levels_nest_and_each_level_clusters_the_one_below():
    x, _ = skewed_points()
    hierarchy = hierarchical_kmeans(x, PARAMS)
    assert hierarchy.n_clusters == [40, 8]
    assert [labels.shape for labels in hierarchy.labels] == [(2000,), (2000,)]
    # a level-1 cluster lies wholly inside one level-2 cluster
    parent = hierarchy.parents(0)
    assert (hierarchy.labels[1] == parent[hierarchy.labels[0]]).all()
    assert hierarchy.centroids[1].shape == (8, 16)
    assert hierarchy.sizes(1).sum() == 2000


def test_level_clusters_are_capped_by_the_items_they_cluster():
    x, _ = skewed_points(n=30)
    params = ConceptParams(levels=[ConceptLevel(n_clusters=50), ConceptLevel(n_clusters=40)])
    hierarchy = hierarchical_kmeans(x, params)
    assert hierarchy.n_clusters == [30, 30]


def test_same_seed_same_clusters_and_sample():
    x, _ = skewed_points()
    a, b = hierarchical_kmeans(x, PARAMS), hierarchical_kmeans(x, PARAMS)
    assert all((la == lb).all() for la, lb in zip(a.labels, b.labels, strict=True))
    assert (balanced_sample(a, 500, "r", 3) == balanced_sample(b, 500, "r", 3)).all()


def test_allocation_caps_evenly_and_hands_out_the_remainder():
    sizes = np.array([100, 50, 5, 3, 30])
    assert find_cap(sizes, 60) == 17  # 17*3 + 5 + 3 = 59 <= 60 < 18*3 + 8
    counts = allocate(sizes, 60, np.random.default_rng(0))
    assert counts.sum() == 60 and counts[2] == 5 and counts[3] == 3
    assert sorted(counts[[0, 1, 4]].tolist()) == [17, 17, 18]
    assert (allocate(sizes, 1000, np.random.default_rng(0)) == sizes).all()


@pytest.mark.parametrize("strategy", ["r", "c"])
def test_balanced_sampling_lowers_the_max_median_ratio(strategy):
    x, _ = skewed_points()
    hierarchy = hierarchical_kmeans(x, PARAMS)
    chosen = balanced_sample(hierarchy, 400, strategy, seed=0)
    assert len(chosen) == 400 and len(set(chosen.tolist())) == 400
    top = flatness(hierarchy, chosen)[-1]
    assert top.ratio_after < top.ratio_before / 2
    assert top.max_after < top.max_before


def test_closest_strategy_picks_points_nearest_their_centroid():
    x, _ = skewed_points()
    hierarchy = hierarchical_kmeans(x, PARAMS)
    closest = balanced_sample(hierarchy, 400, "c", seed=0)
    random = balanced_sample(hierarchy, 400, "r", seed=0)
    assert hierarchy.distances[closest].mean() < hierarchy.distances[random].mean()


def test_levels_must_not_grow():
    with pytest.raises(ValueError, match="at most as many clusters"):
        ConceptParams(levels=[ConceptLevel(n_clusters=4), ConceptLevel(n_clusters=8)])


def _signatures(rng, n=3000, samples=1200, dim=8):
    ids = np.sort(rng.integers(samples, size=n))
    vectors = rng.normal(size=(n, dim)).astype(np.float16)
    present = rng.random(n) > 0.05
    return pa.table(
        {
            "sample_id": [f"s{i:05d}" for i in ids],
            "source": ["a" if i % 3 else "b" for i in ids],
            "phash": rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64),
            "copy_embedding": pa.array(
                [v.tolist() if p else None for v, p in zip(vectors, present, strict=True)],
                pa.list_(pa.float16()),
            ),
        }
    )


def test_sample_vectors_are_the_normalised_means_of_their_images(monkeypatch):
    import fineharbor.core.concepts.embeddings as embeddings

    table = _signatures(np.random.default_rng(4))
    wanted = pa.array(sorted(set(table.column("sample_id").to_pylist()))[::2])
    expected: dict[str, np.ndarray] = {}
    for row in table.to_pylist():
        if row["sample_id"] in set(wanted.to_pylist()) and row["copy_embedding"] is not None:
            expected.setdefault(row["sample_id"], []).append(row["copy_embedding"])
    monkeypatch.setattr(embeddings, "BLOCK_SAMPLES", 7)  # samples straddle many blocks
    ids, sources, means, column = embeddings.sample_embeddings(
        table, wanted, "copy_embedding", picked=True
    )
    assert column == "copy_embedding" and ids.to_pylist() == sorted(expected)
    assert sources.to_pylist() == ["a" if int(i[1:]) % 3 else "b" for i in ids.to_pylist()]
    for i, sample in enumerate(ids.to_pylist()):
        mean = np.asarray(expected[sample], np.float64).sum(axis=0)
        np.testing.assert_allclose(means[i], mean / np.linalg.norm(mean), rtol=1e-6)


def test_phash_vectors_hold_one_signed_eighth_per_bit():
    import fineharbor.core.concepts.embeddings as embeddings

    hashes = np.random.default_rng(5).integers(-(2**63), 2**63 - 1, 50, dtype=np.int64)
    ids = pa.array([f"s{i:03d}" for i in range(50)])
    table = pa.table({"sample_id": ids, "source": ["a"] * 50, "phash": hashes})
    found, _, means, column = embeddings.sample_embeddings(table, ids, "phash", picked=True)
    assert column == "phash" and found.equals(ids) and means.shape == (50, 64)
    for vector, value in zip(means, hashes.tolist(), strict=True):
        bits = [(value >> b) & 1 for b in range(64)]  # bit b of the hash, as the phash sets it
        np.testing.assert_array_equal(vector, np.where(bits, 0.125, -0.125))
