import numpy as np
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
