"""Score decontamination against a ground truth of planted benchmark copies (the demo's).

The ground truth has one row per planted defect (``source, origin_key, defect, of_source,
of_origin_key, transform``); ``benchmark_copy`` rows name the benchmark sample an image was
copied from.

What is counted, over the samples that reached decontamination (its input):

* **Recall per transform**: planted copies flagged ``benchmark_match``, over planted copies.
  ``matched_original`` counts those whose reject names the very benchmark sample copied.
* **False positives**: samples flagged that are not planted copies, over every input sample
  that is not a planted copy (the issue's budget is 0.1% of clean samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from fineharbor.core.schema import make_sample_id

BENCHMARK_COPY = "benchmark_copy"
ALL = "all"


@dataclass
class CopyScore:
    planted: int = 0
    flagged: int = 0
    matched_original: int = 0
    missed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.flagged / self.planted if self.planted else 1.0


@dataclass
class DecontamReport:
    by_transform: dict[str, CopyScore]
    clean_samples: int
    false_positives: list[str]

    @property
    def false_positive_rate(self) -> float:
        return len(self.false_positives) / self.clean_samples if self.clean_samples else 0.0

    def rows(self) -> list[dict]:
        return [
            {
                "transform": name,
                "planted": score.planted,
                "flagged": score.flagged,
                "recall": score.recall,
                "matched_original": score.matched_original,
            }
            for name, score in self.by_transform.items()
        ]


def evaluate_decontamination(
    checked_sample_ids: set[str], rejects: pa.Table, ground_truth: pa.Table
) -> DecontamReport:
    """Recall per transform and false positives of ``rejects`` (decontamination's ledger) on
    the planted copies among ``checked_sample_ids`` (the train samples decontamination saw)."""
    matched = {
        r["sample_id"]: r["matched_origin_key"]
        for r in rejects.to_pylist()
        if r["reason"] == "benchmark_match"
    }
    copies = {
        make_sample_id(r["source"], r["origin_key"]): r
        for r in ground_truth.to_pylist()
        if r["defect"] == BENCHMARK_COPY
    }
    scores: dict[str, CopyScore] = {ALL: CopyScore()}
    for sample_id, row in sorted(copies.items()):
        if sample_id not in checked_sample_ids:
            continue  # dropped upstream (a duplicate of another copy, say): not decontam's case
        for score in (scores[ALL], scores.setdefault(row["transform"], CopyScore())):
            score.planted += 1
            if sample_id in matched:
                score.flagged += 1
                score.matched_original += matched[sample_id] == row["of_origin_key"]
            else:
                score.missed.append(sample_id)
    clean = checked_sample_ids - copies.keys()
    false_positives = sorted(s for s in matched if s in clean)
    return DecontamReport(scores, len(clean), false_positives)
