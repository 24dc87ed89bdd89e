"""Which samples of the release input enter the release, and which of their turns.

Every candidate is either selected or rejected with a stable reason, so the release accounts
for its whole input: ``source_not_in_recipe``, ``benchmark_source``, one reason per score
threshold named after its score (:data:`THRESHOLDS`: ``clip_score_low``, ``clip_score_high``,
``quality_low``, ``punsafe_high``, ``watermark_high``, ``aesthetic_low``, ``pii_found``),
``rating_below_min`` (every turn fell below a judge minimum), ``source_weight``,
``source_cap``, ``concept_balance``, and what reviewers decided: ``source_not_approved`` and
``human_flagged``; and ``image_only_excluded`` when the recipe leaves image-only samples out.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.concepts.kmeans import ConceptHierarchy
from fineharbor.core.concepts.sampling import Flatness, balanced_sample, flatness
from fineharbor.core.release.params import RATING_AXES, ReleaseRecipe
from fineharbor.core.schema import REJECT_SCHEMA

SCORED_STAGE = (
    "scored_samples (quality scoring: CLIP score, UniFilter score, judge ratings, image signals)"
)


# Cleaning lists each personal-data match in `pii_found` (null: the sample was not scanned); the
# release thresholds their number.
PII_FOUND = "pii_found"
PII_COUNT = "pii_count"


@dataclass(frozen=True)
class Threshold:
    """One score threshold of the recipe: the reject reason named after the score, the input
    column, the recipe field, and whether it is a minimum (lower scores fail) or a maximum."""

    reason: str
    column: str
    setting: str
    minimum: bool
    label: str

    def limit(self, recipe: ReleaseRecipe) -> float | None:
        return getattr(recipe, self.setting)

    def fails(self, value: float | None, recipe: ReleaseRecipe) -> bool:
        limit = self.limit(recipe)
        if limit is None:
            return False
        if value is None:
            return recipe.require_scores
        return value < limit if self.minimum else value > limit

    def detail(self, value: float | None, recipe: ReleaseRecipe) -> str:
        if value is None:
            return f"no {self.column}; release.require_scores is true"
        return f"{self.column} {value:.6g} {'<' if self.minimum else '>'} {self.limit(recipe)}"


# In the order they are tried: a sample failing several is rejected for the first.
THRESHOLDS = (
    Threshold("clip_score_low", "clip_score", "clip_score_min", True, "CLIP score minimum"),
    Threshold("clip_score_high", "clip_score", "clip_score_max", False, "CLIP score maximum"),
    Threshold("quality_low", "quality_score", "quality_min", True, "quality score minimum"),
    Threshold("punsafe_high", "punsafe", "punsafe_max", False, "NSFW probability maximum"),
    Threshold("watermark_high", "pwatermark", "pwatermark_max", False, "watermark maximum"),
    Threshold("aesthetic_low", "aesthetic_score", "aesthetic_score_min", True, "aesthetic minimum"),
    Threshold("pii_found", PII_COUNT, "pii_max", False, "personal-data matches maximum"),
)
# What the card reports the distribution of: every thresholded score, and the face count.
SIGNAL_COLUMNS = {
    "clip_score": pa.float32(),
    "quality_score": pa.float32(),
    "punsafe": pa.float32(),
    "pwatermark": pa.float32(),
    "aesthetic_score": pa.float32(),
    "face_count": pa.int32(),
}


SOURCE_NOT_APPROVED = "source_not_approved"
HUMAN_FLAGGED = "human_flagged"
IMAGE_ONLY_EXCLUDED = "image_only_excluded"

# The recipe setting (or the decision) behind each reason a sample is left out of a release.
REASON_SETTINGS = {
    "benchmark_source": "role: benchmark",
    "source_not_in_recipe": "release.sources",
    **{t.reason: f"release.{t.setting}" for t in THRESHOLDS},
    "rating_below_min": "release.min_ratings",
    IMAGE_ONLY_EXCLUDED: "release.include_image_only",
    "source_weight": "release.sources[].weight",
    "source_cap": "release.sources[].cap",
    "concept_balance": "release.balancing",
    SOURCE_NOT_APPROVED: "reviews.yaml (fineharbor review NAME --approve)",
    HUMAN_FLAGGED: "reviews.yaml (flagged samples)",
}


def left_out_by(reasons: Mapping[str, int]) -> str:
    """What left samples out of a release, most samples first, each with the recipe setting
    behind it: `clip_score_low: 120 (release.clip_score_min), ...`; how an empty release says
    which filter emptied it."""
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(
        f"{reason}: {count} ({REASON_SETTINGS.get(reason, 'stage')})" for reason, count in ranked
    )


@dataclass(frozen=True)
class ReleaseGate:
    """What people decided about the release input (``reviews.yaml``): train sources that may
    not enter and why, and flagged samples per source (sample_id -> who flagged it and why)."""

    blocked: Mapping[str, str] = field(default_factory=dict)
    flagged: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def split(self, source: str, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """(rows that may enter, rejects for the others)."""
        if source in self.blocked:
            return [], [reject(r, SOURCE_NOT_APPROVED, self.blocked[source]) for r in rows]
        flagged = self.flagged.get(source, {})
        kept = [r for r in rows if r["sample_id"] not in flagged]
        dropped = [
            reject(r, HUMAN_FLAGGED, flagged[r["sample_id"]])
            for r in rows
            if r["sample_id"] in flagged
        ]
        return kept, dropped


class ReleaseInputError(ValueError):
    """The recipe asks for a filter whose score column the release input does not hold."""


def ratings_column(axis: str) -> str:
    return f"{axis}_ratings"


def min_column(axis: str) -> str:
    return f"{axis}_min"


def required_columns(recipe: ReleaseRecipe) -> list[str]:
    needed = list(
        dict.fromkeys(
            PII_FOUND if t.column == PII_COUNT else t.column
            for t in THRESHOLDS
            if t.limit(recipe) is not None
        )
    )
    needed += [ratings_column(axis) for axis in recipe.min_ratings.active()]
    return needed


def check_input(schema: pa.Schema, recipe: ReleaseRecipe, input_asset: str) -> None:
    """Fail, naming the column and its stage, when a configured filter cannot be applied."""
    missing = [c for c in required_columns(recipe) if schema.get_field_index(c) < 0]
    if missing:
        raise ReleaseInputError(
            f"the release recipe filters on {', '.join(missing)} but the release input "
            f"{input_asset!r} has no such column: it is produced by {SCORED_STAGE}; "
            "materialize that stage and make it the release input, or remove the threshold"
        )


def score_columns(schema: pa.Schema) -> list[str]:
    """The contract's score columns present in the input (all are optional)."""
    names = [*SIGNAL_COLUMNS, PII_FOUND]
    for axis in RATING_AXES:
        names += [ratings_column(axis), min_column(axis)]
    return [n for n in names if schema.get_field_index(n) >= 0]


def reject(row: dict, reason: str, detail: str) -> dict:
    """A reject ledger row for an input row (needs sample_id, source, origin_key)."""
    return {
        "sample_id": row["sample_id"],
        "source": row["source"],
        "origin_key": row["origin_key"],
        "reason": reason,
        "detail": detail,
    }


def _threshold_reason(row: dict, recipe: ReleaseRecipe) -> tuple[str, str] | None:
    for threshold in THRESHOLDS:
        value = row.get(threshold.column)
        if threshold.fails(value, recipe):
            return threshold.reason, threshold.detail(value, recipe)
    return None


def kept_turns(row: dict, recipe: ReleaseRecipe, n_turns: int) -> list[int] | None:
    """Indices of turns meeting every judge minimum; None = all turns (no minimum set)."""
    minimums = recipe.min_ratings.active()
    if not minimums:
        return None
    keep = []
    for turn in range(n_turns):
        ok = True
        for axis, minimum in minimums.items():
            ratings = row.get(ratings_column(axis))
            rating = ratings[turn] if ratings is not None and turn < len(ratings) else None
            if rating is None:
                ok = ok and not recipe.require_scores
            elif rating < minimum:
                ok = False
        if ok:
            keep.append(turn)
    return keep


@dataclass
class Candidates:
    """Samples that passed the thresholds, with the turns kept; and the rejected rows."""

    turns: dict[str, list[int] | None] = field(default_factory=dict)
    source_of: dict[str, str] = field(default_factory=dict)
    rejects: list[dict] = field(default_factory=list)
    signals: list[pa.Table] = field(default_factory=list)
    """The :data:`SIGNAL_COLUMNS` of every row the thresholds were applied to (the card's
    distributions), one table per input batch."""

    def add_signals(self, batch: pa.RecordBatch, sample_ids: list[str]) -> None:
        """Keep the signal columns of ``sample_ids``' rows of ``batch``; a column the batch
        lacks (a partition scored before the signal existed) is null."""
        rows = batch.filter(pc.is_in(batch.column("sample_id"), pa.array(sample_ids, pa.string())))
        names = batch.schema.names
        self.signals.append(
            pa.table(
                {
                    name: rows.column(name).cast(kind)
                    if name in names
                    else pa.nulls(rows.num_rows, kind)
                    for name, kind in SIGNAL_COLUMNS.items()
                }
            )
        )

    def signal_table(self) -> pa.Table:
        schema = pa.schema(list(SIGNAL_COLUMNS.items()))
        return (
            pa.concat_tables([t.cast(schema) for t in self.signals])
            if self.signals
            else (schema.empty_table())
        )


def filter_rows(rows: list[dict], recipe: ReleaseRecipe, into: Candidates) -> None:
    """Apply the score :data:`THRESHOLDS` and turn-level judge minimums to input rows.

    Rows need sample_id, source, origin_key, n_turns and whichever score columns exist.
    """
    minimums = recipe.min_ratings.active()
    for row in rows:
        failed = _threshold_reason(row, recipe)
        if failed:
            into.rejects.append(reject(row, *failed))
            continue
        image_only = row["n_turns"] == 0
        if image_only and not recipe.include_image_only:
            detail = "no turns; release.include_image_only is false"
            into.rejects.append(reject(row, IMAGE_ONLY_EXCLUDED, detail))
            continue
        # An image-only sample has no turn to rate: the judge minimums do not apply to it.
        turns = None if image_only else kept_turns(row, recipe, row["n_turns"])
        if turns is not None and not turns:
            limits = ", ".join(f"{a} >= {m}" for a, m in minimums.items())
            into.rejects.append(
                reject(row, "rating_below_min", f"all {row['n_turns']} turns below {limits}")
            )
            continue
        into.turns[row["sample_id"]] = turns
        into.source_of[row["sample_id"]] = row["source"]


def _source_rng(seed: int, source: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(source.encode())])


def apply_source_mix(candidates: Candidates, recipe: ReleaseRecipe, origin: dict[str, str]) -> None:
    """Per source: keep a seeded `weight` fraction, then at most `cap` samples."""
    by_source: dict[str, list[str]] = {}
    for sample_id, source in candidates.source_of.items():
        by_source.setdefault(source, []).append(sample_id)
    mix = {s.name: s for s in recipe.sources}
    for source, ids in sorted(by_source.items()):
        spec = mix.get(source)
        if spec is None:
            continue
        ids = sorted(ids)
        order = _source_rng(recipe.seed, source).permutation(len(ids))
        keep_n = round(spec.weight * len(ids))
        dropped = {ids[i]: ("source_weight", f"weight {spec.weight}") for i in order[keep_n:]}
        if spec.cap is not None and keep_n > spec.cap:
            dropped |= {ids[i]: ("source_cap", f"cap {spec.cap}") for i in order[spec.cap : keep_n]}
        for sample_id, (reason, detail) in sorted(dropped.items()):
            row = {"sample_id": sample_id, "source": source, "origin_key": origin[sample_id]}
            candidates.rejects.append(reject(row, reason, detail))
            del candidates.turns[sample_id]
            del candidates.source_of[sample_id]


def balance(
    candidates: Candidates,
    recipe: ReleaseRecipe,
    clusters: pa.Table,
    origin: dict[str, str],
) -> list[Flatness]:
    """Vo et al.'s balanced sampling over the candidates that have a concept; others pass."""
    from fineharbor.core.dedup.clusters import list_matrix

    ids = clusters.column("sample_id")
    present = pc.is_in(ids, value_set=pa.array(list(candidates.turns), pa.string()))
    rows = np.flatnonzero(present.to_numpy(zero_copy_only=False))
    if rows.size == 0:
        return []
    paths = list_matrix(clusters.column("clusters"), np.int64)  # (samples, levels)
    labels = [np.ascontiguousarray(paths[:, level]) for level in range(paths.shape[1])]
    hierarchy = ConceptHierarchy(
        labels,
        [int(level.max()) + 1 for level in labels],
        clusters.column("distance").to_numpy(zero_copy_only=False),
    ).subset(rows)
    policy = recipe.balancing
    target = policy.target_size or max(1, round(policy.target_fraction * rows.size))
    chosen = balanced_sample(hierarchy, target, policy.strategy, recipe.seed)
    left = np.setdiff1d(np.arange(rows.size), chosen)
    for sample_id in ids.take(pa.array(rows[left])).to_pylist():
        source = candidates.source_of.pop(sample_id)
        del candidates.turns[sample_id]
        left_out = {"sample_id": sample_id, "source": source, "origin_key": origin[sample_id]}
        candidates.rejects.append(
            reject(left_out, "concept_balance", f"target {target} of {rows.size} clustered")
        )
    return flatness(hierarchy, chosen)


def rejects_table(rows: list[dict]) -> pa.Table:
    rows = sorted(rows, key=lambda r: (r["source"], r["sample_id"]))
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)
