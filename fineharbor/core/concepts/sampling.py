"""Balanced top-down sampling over a concept hierarchy (Vo et al. 2024, hierarchical_sampling).

The target is split across the top level's clusters with one cap: the largest integer ``x`` with
Σ min(x, size_i) <= target; the remainder goes +1 to randomly chosen clusters larger than ``x``.
Each cluster's share is split the same way across its children, down to level 1, where ``r``
picks random points and ``c`` the points closest to the centroid. Small concepts are kept whole
and large ones are cut down, so the cluster-size distribution flattens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fineharbor.core.concepts.kmeans import ConceptHierarchy


def find_cap(sizes: np.ndarray, target: int) -> int:
    """Largest x with sum(min(x, sizes)) <= target (binary search; the sum grows with x)."""
    low, high = 0, int(sizes.max(initial=0))
    while low < high:
        mid = (low + high + 1) // 2
        if int(np.minimum(sizes, mid).sum()) <= target:
            low = mid
        else:
            high = mid - 1
    return low


def allocate(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """How many items each cluster gives: capped evenly, remainder to random larger clusters."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if target >= sizes.sum():
        return sizes.copy()
    cap = find_cap(sizes, target)
    counts = np.minimum(sizes, cap)
    remainder = target - int(counts.sum())
    if remainder > 0:
        larger = np.flatnonzero(sizes > cap)
        counts[rng.choice(larger, remainder, replace=False)] += 1
    return counts


def balanced_sample(
    hierarchy: ConceptHierarchy,
    target: int,
    strategy: Literal["r", "c"] = "r",
    seed: int = 0,
) -> np.ndarray:
    """Sorted indices of ``target`` points chosen top-down (all points if target exceeds them)."""
    rng = np.random.default_rng(seed)
    top = hierarchy.n_levels - 1
    quota = allocate(hierarchy.sizes(top), target, rng)
    for level in range(top - 1, -1, -1):
        sizes = hierarchy.sizes(level)
        parent = hierarchy.parents(level)
        child_quota = np.zeros_like(sizes)
        for cluster in np.flatnonzero(quota):
            children = np.flatnonzero(parent == cluster)
            child_quota[children] = allocate(sizes[children], int(quota[cluster]), rng)
        quota = child_quota
    labels = hierarchy.labels[0]
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(quota) + 1))
    chosen = []
    for cluster in np.flatnonzero(quota):
        members = order[bounds[cluster] : bounds[cluster + 1]]
        if strategy == "c":
            members = members[np.argsort(hierarchy.distances[members], kind="stable")]
        else:
            members = rng.permutation(members)
        chosen.append(members[: quota[cluster]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Flatness:
    """One level's cluster sizes before and after sampling: max, median and their ratio."""

    level: int
    clusters: int
    max_before: int
    median_before: float
    max_after: int
    median_after: float

    @property
    def ratio_before(self) -> float:
        return self.max_before / self.median_before if self.median_before else float("inf")

    @property
    def ratio_after(self) -> float:
        return self.max_after / self.median_after if self.median_after else float("inf")

    def as_dict(self) -> dict[str, float | int]:
        return {
            "level": self.level,
            "clusters": self.clusters,
            "max_before": self.max_before,
            "median_before": self.median_before,
            "max_median_ratio_before": round(self.ratio_before, 4),
            "max_after": self.max_after,
            "median_after": self.median_after,
            "max_median_ratio_after": round(self.ratio_after, 4),
        }


def flatness(hierarchy: ConceptHierarchy, selected: np.ndarray) -> list[Flatness]:
    """Per level (1 = finest), over the clusters that held points before sampling. Balancing
    targets the top level most: its ratio is the headline (Vo et al.'s concept balance)."""
    report = []
    for level, labels in enumerate(hierarchy.labels):
        before = hierarchy.sizes(level)
        after = np.bincount(labels[selected], minlength=len(before))
        present = before > 0
        report.append(
            Flatness(
                level=level + 1,
                clusters=int(present.sum()),
                max_before=int(before[present].max(initial=0)),
                median_before=float(np.median(before[present])) if present.any() else 0.0,
                max_after=int(after[present].max(initial=0)),
                median_after=float(np.median(after[present])) if present.any() else 0.0,
            )
        )
    return report
