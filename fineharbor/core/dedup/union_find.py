"""Union-find over duplicate edges (DanQing's image-redundancy clustering).

Pairs found by different signals (pixel hash, perceptual hash, embeddings, URL+caption, text)
are unioned into connected components: if A~B and B~C, A, B and C form one cluster and one member
is kept. :func:`components` labels a whole edge list at once (scipy's connected components over
a sparse graph, no Python loop per edge); :class:`UnionFind` is the incremental form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components


class UnionFind:
    """Disjoint sets over the integers ``0..n-1``."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = int(parent[x])
        return int(x)

    def union(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b``; False when they were already one set."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def union_pairs(self, pairs: Iterable[tuple[int, int]]) -> None:
        for a, b in pairs:
            self.union(int(a), int(b))

    def roots(self) -> np.ndarray:
        """The root of every element (fully compressed)."""
        return np.fromiter((self.find(i) for i in range(len(self))), np.int64, len(self))

    def components(self, min_size: int = 2) -> list[list[int]]:
        """Sets with at least ``min_size`` members, each sorted, ordered by their smallest
        member: the same input pairs in any order give the same list."""
        roots = self.roots()
        groups: dict[int, list[int]] = {}
        for element, root in enumerate(roots.tolist()):
            groups.setdefault(root, []).append(element)
        found = [members for members in groups.values() if len(members) >= min_size]
        return sorted(found, key=lambda members: members[0])


def components(n: int, a: np.ndarray, b: np.ndarray, min_size: int = 2) -> list[np.ndarray]:
    """Connected components of the graph on ``0..n-1`` with edges ``(a[k], b[k])``: the sets
    with at least ``min_size`` members, each sorted, ordered by their smallest member (the same
    as :meth:`UnionFind.components` over the same pairs)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if n == 0:
        return []
    graph = coo_array((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] >= min_size)
    if members.size == 0:
        return []
    # members are ascending, so a stable sort by label keeps each set sorted
    order = np.argsort(labels[members], kind="stable")
    grouped = members[order]
    cuts = np.flatnonzero(np.diff(labels[grouped])) + 1
    sets = np.split(grouped, cuts)
    return sorted(sets, key=lambda s: int(s[0]))


def cluster_id(member_ids: Sequence[str]) -> str:
    """Deterministic id of a cluster: a hash of its sorted member ids, so a rerun over the same
    data gives the same id whatever order the pairs were found in."""
    digest = hashlib.sha256("\x1f".join(sorted(member_ids)).encode()).hexdigest()
    return f"dc-{digest[:20]}"
