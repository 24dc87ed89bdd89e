"""Score duplicate clusters against a ground truth of planted duplicates (the demo's).

The ground truth has one row per planted defect (``source, origin_key, defect, of_source,
of_origin_key, transform``); rows with ``of_source`` name the original a copy was made from.

What is counted:

* **True groups**: planted copies are unioned with their originals (transitively, so two copies
  of one original belong together, also when the original is a benchmark image outside the
  deduplicated sources). A pair of deduplicated samples is a *true pair* when both are in one
  true group.
* **Recall per transform**: planted (copy, original) pairs with both samples present whose
  members ended in the same predicted cluster, over all such pairs. Benchmark copies whose
  original is not deduplicated are not counted (decontamination's job).
* **Precision per transform**: over the predicted pairs that involve a planted copy of that
  transform (the copy with every other member of its cluster), the share that are true pairs.
* **Overall precision**: over *all* predicted pairs (every pair of members of every cluster,
  including clusters with no planted sample at all), the share that are true pairs; and the
  share of predicted clusters that lie within one true group.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

import pyarrow as pa

from fineharbor.core.dedup.union_find import UnionFind
from fineharbor.core.schema import make_sample_id

ALL = "all"


@dataclass
class TransformScore:
    planted: int = 0
    found: int = 0
    flagged_pairs: int = 0
    true_flagged_pairs: int = 0
    missed: list[tuple[str, str]] = field(default_factory=list)
    wrong: list[tuple[str, str]] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / self.planted if self.planted else 1.0

    @property
    def precision(self) -> float:
        return self.true_flagged_pairs / self.flagged_pairs if self.flagged_pairs else 1.0


@dataclass
class QualityReport:
    by_transform: dict[str, TransformScore]
    predicted_pairs: int
    true_predicted_pairs: int
    clusters: int
    pure_clusters: int
    false_pairs: list[tuple[str, str]]

    @property
    def precision(self) -> float:
        return self.true_predicted_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def cluster_precision(self) -> float:
        return self.pure_clusters / self.clusters if self.clusters else 1.0

    def rows(self) -> list[dict]:
        out = []
        for name, score in self.by_transform.items():
            out.append(
                {
                    "transform": name,
                    "planted": score.planted,
                    "found": score.found,
                    "recall": score.recall,
                    "flagged_pairs": score.flagged_pairs,
                    "true_pairs": score.true_flagged_pairs,
                    "precision": score.precision,
                }
            )
        return out


def _transform_name(row: dict) -> str:
    if row["defect"] == "exact_duplicate":
        return "exact"
    return row.get("transform") or row["defect"]


def evaluate_clusters(
    duplicates: pa.Table,
    present_sample_ids: set[str],
    ground_truth: pa.Table,
    *,
    defects: tuple[str, ...] = (
        "exact_duplicate",
        "near_duplicate_resize",
        "near_duplicate_jpeg",
        "near_duplicate_crop",
        "near_duplicate_flip",
    ),
) -> QualityReport:
    """Recall and precision of ``duplicates`` (``DUPLICATE_SCHEMA``) on the planted pairs."""
    truth = ground_truth.to_pylist()
    linked = [r for r in truth if r.get("of_source")]
    names = sorted(
        {make_sample_id(r["source"], r["origin_key"]) for r in linked}
        | {make_sample_id(r["of_source"], r["of_origin_key"]) for r in linked}
    )
    position = {sample_id: k for k, sample_id in enumerate(names)}
    groups = UnionFind(len(names))
    for r in linked:  # benchmark copies too: two copies of one benchmark image belong together
        groups.union(
            position[make_sample_id(r["source"], r["origin_key"])],
            position[make_sample_id(r["of_source"], r["of_origin_key"])],
        )

    def true_pair(a: str, b: str) -> bool:
        return (
            a in position and b in position and groups.find(position[a]) == groups.find(position[b])
        )

    cluster_of = dict(
        zip(
            duplicates.column("sample_id").to_pylist(),
            duplicates.column("cluster_id").to_pylist(),
            strict=True,
        )
    )
    members: dict[str, list[str]] = defaultdict(list)
    for sample_id, cid in sorted(cluster_of.items()):
        members[cid].append(sample_id)

    scores: dict[str, TransformScore] = {}
    for r in truth:
        if r["defect"] not in defects or not r.get("of_source"):
            continue
        copy = make_sample_id(r["source"], r["origin_key"])
        original = make_sample_id(r["of_source"], r["of_origin_key"])
        if copy not in present_sample_ids or original not in present_sample_ids:
            continue
        name = _transform_name(r)
        score = scores.setdefault(name, TransformScore())
        score.planted += 1
        if copy in cluster_of and cluster_of[copy] == cluster_of.get(original):
            score.found += 1
        else:
            score.missed.append((copy, original))
        for other in members.get(cluster_of.get(copy, ""), []):
            if other == copy:
                continue
            score.flagged_pairs += 1
            if true_pair(copy, other):
                score.true_flagged_pairs += 1
            else:
                score.wrong.append((copy, other))

    predicted = true_predicted = pure = 0
    false_pairs: list[tuple[str, str]] = []
    for cluster in members.values():
        cluster_pure = True
        for a, b in combinations(cluster, 2):
            predicted += 1
            if true_pair(a, b):
                true_predicted += 1
            else:
                cluster_pure = False
                false_pairs.append((a, b))
        pure += cluster_pure
    order = ["exact", "resize", "jpeg", "crop", "flip"]
    ordered = {k: scores[k] for k in order if k in scores}
    ordered.update({k: v for k, v in scores.items() if k not in ordered})
    return QualityReport(ordered, predicted, true_predicted, len(members), pure, false_pairs)
