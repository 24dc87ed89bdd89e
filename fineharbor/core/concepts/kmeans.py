"""Hierarchical k-means (Vo et al. 2024, ``ssl-data-curation/src/hierarchical_kmeans_gpu.py``).

Level 1 clusters the points; level l > 1 clusters the centroids of level l-1. Each level seeds
with greedy k-means++ (``2 + log k`` local trials, as scikit-learn and the paper's code), runs
``n_iters`` Lloyd iterations with faiss, then optionally takes ``n_resamples`` resampling steps:
keep ``sample_size`` items per cluster (closest to the centroid, or random), rerun k-means on
that subset and reassign every item. Differences from the paper's code, both for speed on one
machine: faiss accumulates in float32 (the paper uses float64), and k-means++ seeds on a random
subset of ``init_points_per_cluster * k`` items. The paper's ``n_splits`` (splitting level 1
into sub-problems to reach 10M clusters on many GPUs) is not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from fineharbor.core.concepts.params import ConceptParams
from fineharbor.core.distributed.tasks import TaskEngine, map_tasks, row_ranges
from fineharbor.core.pipeline import CONCEPTS


def use_gpu(device: str) -> bool:
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if device == "cuda" and not available:
        raise RuntimeError("stages.concepts.device is 'cuda' but faiss sees no GPU (faiss-cpu?)")
    return device != "cpu" and available


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeds: each step keeps the best of ``2 + log k`` D²-sampled candidates."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    norms = np.einsum("ij,ij->i", x, x)
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centers[0] = x[first]
    closest = np.maximum(norms - 2 * x @ x[first] + norms[first], 0)
    for c in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct items than clusters: repeat points
            centers[c] = x[int(rng.integers(n))]
            continue
        candidates = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        candidates = np.minimum(candidates, n - 1)
        to_candidates = np.maximum(
            norms[:, None] - 2 * x @ x[candidates].T + norms[candidates][None, :], 0
        )
        new_closest = np.minimum(closest[:, None], to_candidates)
        best = int(np.argmin(new_closest.sum(axis=0)))
        centers[c] = x[candidates[best]]
        closest = new_closest[:, best]
    return centers


def kmeans(
    x: np.ndarray,
    k: int,
    n_iters: int,
    rng: np.random.Generator,
    gpu: bool = False,
    init_points_per_cluster: int = 64,
) -> np.ndarray:
    """k-means++ seeds, then ``n_iters`` faiss Lloyd iterations on every item; returns centroids."""
    seeding = x
    if x.shape[0] > init_points_per_cluster * k:
        pick = rng.choice(x.shape[0], init_points_per_cluster * k, replace=False)
        seeding = x[np.sort(pick)]
    init = kmeans_plus_plus(seeding, k, rng)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=n_iters,
        seed=int(rng.integers(2**31 - 1)),
        gpu=gpu,
        max_points_per_centroid=max(x.shape[0], 1),  # train on every item, as the paper
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x, init_centroids=init)
    return km.centroids


def _assign_rows(
    rows: tuple[int, int], x: np.ndarray, centroids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One task: nearest centroid of items ``[start, stop)`` and the squared L2 to it."""
    start, stop = rows
    distances, labels = faiss.knn(x[start:stop], centroids, 1)
    return labels[:, 0].astype(np.int64), distances[:, 0]


def assign(
    x: np.ndarray,
    centroids: np.ndarray,
    gpu: bool = False,
    engine: TaskEngine | None = None,
    shared_x: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each item and the squared L2 distance to it: on the GPU, or in tasks
    of ``engine.task_rows`` items on ``engine`` (Ray when the stage runs there; the same
    chunks locally, so both give the same labels). ``shared_x``: ``x`` already
    :meth:`~fineharbor.core.distributed.tasks.TaskEngine.share`-d."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if gpu:
        index = faiss.IndexFlatL2(centroids.shape[1])
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(centroids)
        distances, labels = index.search(x, 1)
        return labels[:, 0].astype(np.int64), distances[:, 0]
    engine = engine or TaskEngine(CONCEPTS)
    parts = map_tasks(
        _assign_rows,
        row_ranges(x.shape[0], engine.task_rows),
        engine=engine,
        shared=(
            np.ascontiguousarray(x, dtype=np.float32) if shared_x is None else shared_x,
            centroids,
        ),
    )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def resample_subset(
    labels: np.ndarray,
    distances: np.ndarray,
    k: int,
    sample_size: int,
    strategy: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices of up to ``sample_size`` items per cluster: closest to the centroid or random."""
    key = distances if strategy == "closest" else rng.random(labels.shape[0])
    order = np.lexsort((key, labels))  # by cluster, then closest / random first
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(k))
    rank = np.arange(labels.shape[0]) - starts[sorted_labels]
    return np.sort(order[rank < sample_size])


@dataclass
class ConceptHierarchy:
    """Per level: each point's cluster and each cluster's parent one level up."""

    labels: list[np.ndarray]  # labels[l][i] = cluster of point i at level l+1
    n_clusters: list[int]
    distances: np.ndarray  # squared L2 of each point to its level-1 centroid
    centroids: list[np.ndarray] | None = None

    @property
    def n_levels(self) -> int:
        return len(self.labels)

    def sizes(self, level: int) -> np.ndarray:
        return np.bincount(self.labels[level], minlength=self.n_clusters[level])

    def parents(self, level: int) -> np.ndarray:
        """Cluster one level up of each cluster at `level` (-1 where a cluster has no point)."""
        parent = np.full(self.n_clusters[level], -1, dtype=np.int64)
        if level + 1 < self.n_levels:
            parent[self.labels[level]] = self.labels[level + 1]
        else:
            parent[self.labels[level]] = 0
        return parent

    def subset(self, rows: np.ndarray) -> ConceptHierarchy:
        """The same clusters restricted to some points (e.g. those left after filtering)."""
        return ConceptHierarchy(
            [labels[rows] for labels in self.labels], self.n_clusters, self.distances[rows]
        )


def _cluster_level(
    items: np.ndarray,
    k: int,
    level,
    params: ConceptParams,
    rng: np.random.Generator,
    gpu: bool,
    engine: TaskEngine | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    engine = engine or TaskEngine(CONCEPTS)
    # the items every assignment of this level reads: put in Ray's object store once
    shared = None if gpu else engine.share(items)
    centroids = kmeans(items, k, params.n_iters, rng, gpu, params.init_points_per_cluster)
    labels, distances = assign(items, centroids, gpu, engine, shared)
    if level.sample_size > 1:
        for _ in range(level.n_resamples):
            subset = resample_subset(
                labels, distances, k, level.sample_size, params.resample_strategy, rng
            )
            if subset.shape[0] < k:
                break
            centroids = kmeans(
                items[subset], k, params.n_iters, rng, gpu, params.init_points_per_cluster
            )
            labels, distances = assign(items, centroids, gpu, engine, shared)
    return centroids, labels, distances


def hierarchical_kmeans(
    x: np.ndarray, params: ConceptParams, engine: TaskEngine | None = None
) -> ConceptHierarchy:
    """Cluster ``x`` (n x d) bottom-up through ``params.levels``; deterministic for a seed.
    Assigning items to centroids runs in tasks on ``engine`` (see :func:`assign`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, d) array of embeddings, got shape {x.shape}")
    rng = np.random.default_rng(params.seed)
    gpu = use_gpu(params.device)
    items = x
    labels: list[np.ndarray] = []
    centroids: list[np.ndarray] = []
    distances = np.zeros(x.shape[0], dtype=np.float32)
    for depth, level in enumerate(params.levels):
        k = min(level.n_clusters, items.shape[0])
        level_centroids, item_labels, item_distances = _cluster_level(
            items, k, level, params, rng, gpu, engine
        )
        if depth == 0:
            labels.append(item_labels)
            distances = item_distances
        else:
            labels.append(item_labels[labels[-1]])
        centroids.append(level_centroids)
        items = level_centroids
    return ConceptHierarchy(labels, [len(c) for c in centroids], distances, centroids)
