"""Which samples of the release input enter the release, and which of their turns.

The selection is columnar (:class:`Candidates`): the input streams through it in record batches
and it keeps, per row, only the id, origin key, verdict and what the verdict needs, so it holds
about a hundred bytes per candidate rather than a Python dict (docs/scale.md).

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


# A candidate's verdict is one byte: 0 = selected, else 1 + its index here.
REASONS = (
    "benchmark_source",
    "source_not_in_recipe",
    SOURCE_NOT_APPROVED,
    HUMAN_FLAGGED,
    *[t.reason for t in THRESHOLDS],
    IMAGE_ONLY_EXCLUDED,
    "rating_below_min",
    "source_weight",
    "source_cap",
    "concept_balance",
)
_CODE = {reason: code for code, reason in enumerate(REASONS, start=1)}
TURNS = pa.list_(pa.int32())


def _array(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array | None:
    if batch.schema.get_field_index(name) < 0:
        return None
    column = batch.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _scores(batch: pa.RecordBatch, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, 0 where null; validity) of a thresholded column; the personal-data
    count is the length of the `pii_found` list. A column the batch lacks is all null."""
    array = _array(batch, PII_FOUND if column == PII_COUNT else column)
    if array is None:
        return np.zeros(batch.num_rows), np.zeros(batch.num_rows, bool)
    if column == PII_COUNT:
        array = pc.list_value_length(array)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return array.cast(pa.float64()).fill_null(0).to_numpy(), valid


def _kept_turns(
    batch: pa.RecordBatch, n_turns: np.ndarray, recipe: ReleaseRecipe
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every turn of the batch, flattened: (its row, its index in the row, whether it meets
    every judge minimum). A rating that is null or beyond the ratings list fails only when
    ``release.require_scores`` is true."""
    row_of = np.repeat(np.arange(batch.num_rows), n_turns)
    turn = np.arange(row_of.size) - np.repeat(np.cumsum(n_turns) - n_turns, n_turns)
    ok = np.ones(row_of.size, bool)
    for axis, minimum in recipe.min_ratings.active().items():
        ratings = _array(batch, ratings_column(axis))
        has = np.zeros(row_of.size, bool)
        if ratings is not None and len(ratings.values):
            lengths = pc.list_value_length(ratings).fill_null(0).to_numpy()
            at = np.where(turn < lengths[row_of], ratings.offsets.to_numpy()[:-1][row_of] + turn, 0)
            values = ratings.values
            has = (turn < lengths[row_of]) & values.is_valid().to_numpy(zero_copy_only=False)[at]
            meets = values.cast(pa.int64()).fill_null(0).to_numpy()[at] >= minimum
            ok &= np.where(has, meets, True)
        ok &= has | (not recipe.require_scores)
    return row_of, turn, ok


@dataclass
class Candidates:
    """Every row of the release input, columnar, with its verdict: selected, or left out for
    one of :data:`REASONS` with a detail. Per row it holds the id, origin key, a detail string
    (rows left out while reading), the kept turns (only under judge minimums), a source code
    and a verdict byte; the rows are streamed in with :meth:`leave_out` and :meth:`admit`,
    then the source mix and the balancing decide among the rows still selected."""

    recipe: ReleaseRecipe
    gate: ReleaseGate = field(default_factory=ReleaseGate)
    signals: list[pa.Table] = field(default_factory=list)
    """The :data:`SIGNAL_COLUMNS` of every row the thresholds were applied to (the card's
    distributions), one table per input batch."""
    _sources: list[str] = field(default_factory=list)
    _batches: list[pa.RecordBatch] = field(default_factory=list)
    _source_codes: list[np.ndarray] = field(default_factory=list)
    _verdicts: list[np.ndarray] = field(default_factory=list)
    _frozen: tuple[pa.Table, np.ndarray, np.ndarray] | None = None
    _late: dict[tuple[int, int], str] = field(default_factory=dict)
    """The detail of a verdict that is the same for every row it falls on (a whole source left
    out, the source mix, the balancing), by (reason code, source code)."""

    def _codes(self, batch: pa.RecordBatch) -> np.ndarray:
        encoded = pc.dictionary_encode(_array(batch, "source"))
        own = []
        for name in encoded.dictionary.to_pylist():
            if name not in self._sources:
                self._sources.append(name)
            own.append(self._sources.index(name))
        return np.asarray(own, np.int16)[encoded.indices.to_numpy(zero_copy_only=False)]

    def _append(
        self,
        batch: pa.RecordBatch,
        verdict: np.ndarray,
        detail: np.ndarray | str,
        turns: pa.Array | None = None,
    ) -> None:
        """Add ``batch``'s rows with their verdicts; ``detail`` is one per row, or one string
        for a verdict that is the same for every row (held once, not per row)."""
        if self._frozen is not None:
            raise RuntimeError("rows added after the source mix or the balancing")
        n = batch.num_rows
        codes = self._codes(batch)
        if isinstance(detail, str):
            for code in np.unique(codes):
                self._late[int(verdict[0]), int(code)] = detail
            detail = np.full(n, None, object)
        self._batches.append(
            pa.record_batch(
                {
                    "sample_id": _array(batch, "sample_id"),
                    "origin_key": _array(batch, "origin_key"),
                    "detail": pa.array(detail, pa.string()),
                    "turns": pa.nulls(n, TURNS) if turns is None else turns,
                }
            )
        )
        self._source_codes.append(codes)
        self._verdicts.append(verdict)

    def leave_out(self, batch: pa.RecordBatch, reason: str, detail: str) -> None:
        """Reject every row of ``batch`` (sample_id, source, origin_key) for one reason."""
        self._append(batch, np.full(batch.num_rows, _CODE[reason], np.uint8), detail)

    def admit(self, batch: pa.RecordBatch, source: str) -> None:
        """Apply the reviewers' gate, the score :data:`THRESHOLDS` (the first one failed is the
        reason) and the turn-level judge minimums to rows of ``source``. ``batch`` holds
        sample_id, source, origin_key, texts and whichever score columns exist."""
        recipe, n = self.recipe, batch.num_rows
        verdict, detail = np.zeros(n, np.uint8), np.full(n, None, object)
        if source in self.gate.blocked:
            verdict[:] = _CODE[SOURCE_NOT_APPROVED]
            return self._append(batch, verdict, self.gate.blocked[source])
        flagged = self.gate.flagged.get(source, {})
        if flagged:
            ids = _array(batch, "sample_id")
            hit = pc.is_in(ids, pa.array(list(flagged), pa.string()))
            for i in np.flatnonzero(hit.to_numpy(zero_copy_only=False)):
                verdict[i], detail[i] = _CODE[HUMAN_FLAGGED], flagged[ids[i].as_py()]
        self._add_signals(batch, verdict == 0)
        for threshold in THRESHOLDS:
            limit = threshold.limit(recipe)
            if limit is None:
                continue
            values, valid = _scores(batch, threshold.column)
            beyond = values < limit if threshold.minimum else values > limit
            fails = (verdict == 0) & np.where(valid, beyond, recipe.require_scores)
            for i in np.flatnonzero(fails):
                value = values[i].item() if valid[i] else None
                verdict[i], detail[i] = _CODE[threshold.reason], threshold.detail(value, recipe)
        texts = _array(batch, "texts")
        n_turns = pc.list_value_length(texts).fill_null(0).to_numpy().astype(np.int64)
        if not recipe.include_image_only:
            excluded = (verdict == 0) & (n_turns == 0)
            verdict[excluded] = _CODE[IMAGE_ONLY_EXCLUDED]
            detail[excluded] = "no turns; release.include_image_only is false"
        minimums = recipe.min_ratings.active()
        if not minimums:
            return self._append(batch, verdict, detail)
        # An image-only sample has no turn to rate: the judge minimums do not apply to it.
        row_of, turn, ok = _kept_turns(batch, n_turns, recipe)
        rated = (verdict == 0) & (n_turns > 0)
        below = rated & (np.bincount(row_of[ok], minlength=n) == 0)
        limits = ", ".join(f"{a} >= {m}" for a, m in minimums.items())
        for i in np.flatnonzero(below):
            detail[i] = f"all {n_turns[i]} turns below {limits}"
        verdict[below] = _CODE["rating_below_min"]
        kept = rated & ~below
        take = ok & kept[row_of]
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(np.bincount(row_of[take], minlength=n), out=offsets[1:])
        turns = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(turn[take], pa.int32()), mask=pa.array(~kept)
        )
        self._append(batch, verdict, detail, turns)

    def _add_signals(self, batch: pa.RecordBatch, keep: np.ndarray) -> None:
        """Keep the signal columns of ``keep``'s rows of ``batch``; a column the batch lacks (a
        partition scored before the signal existed) is null."""
        rows = batch.filter(pa.array(keep))
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

    def _ledger(self) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """(ids, origin keys, details, turns; source codes; verdicts) of every row: the batches
        become the chunks of one table (no copy) once every row is in."""
        if self._frozen is None:
            schema = pa.schema(
                [
                    ("sample_id", pa.string()),
                    ("origin_key", pa.string()),
                    ("detail", pa.string()),
                    ("turns", TURNS),
                ]
            )
            self._frozen = (
                pa.Table.from_batches(self._batches, schema=schema),
                np.concatenate([np.zeros(0, np.int16), *self._source_codes]),
                np.concatenate([np.zeros(0, np.uint8), *self._verdicts]),
            )
            self._batches, self._source_codes, self._verdicts = [], [], []
        return self._frozen

    def _selected(self, source: str | None = None) -> tuple[pa.Table, np.ndarray]:
        """The ledger and the positions of its selected rows (of ``source``), in id order."""
        table, codes, verdicts = self._ledger()
        selected = verdicts == 0
        if source is not None:
            selected &= codes == (self._sources.index(source) if source in self._sources else -1)
        rows = np.flatnonzero(selected)
        ids = table.column("sample_id").take(rows)
        return table, rows[pc.sort_indices(ids).to_numpy()]

    def apply_source_mix(self) -> None:
        """Per source: keep a seeded `weight` fraction, then at most `cap` samples."""
        recipe = self.recipe
        _, _, verdicts = self._ledger()
        for spec in {s.name: s for s in recipe.sources}.values():
            _, rows = self._selected(spec.name)
            if not rows.size:
                continue
            code = self._sources.index(spec.name)
            order = rows[_source_rng(recipe.seed, spec.name).permutation(rows.size)]
            keep_n = round(spec.weight * rows.size)
            verdicts[order[keep_n:]] = _CODE["source_weight"]
            self._late[_CODE["source_weight"], code] = f"weight {spec.weight}"
            if spec.cap is not None and keep_n > spec.cap:
                verdicts[order[spec.cap : keep_n]] = _CODE["source_cap"]
                self._late[_CODE["source_cap"], code] = f"cap {spec.cap}"

    def balance(self, clusters: pa.Table) -> list[Flatness]:
        """Vo et al.'s balanced sampling over the selected rows that have a concept; others
        pass."""
        from fineharbor.core.dedup.clusters import list_matrix

        table, rows = self._selected()
        _, _, verdicts = self._ledger()
        # each concept row's position among the selected ids in id order (null: not selected)
        at = pc.index_in(
            clusters.column("sample_id"),
            value_set=table.column("sample_id").take(rows).combine_chunks(),
        )
        clustered = np.flatnonzero(at.is_valid().to_numpy(zero_copy_only=False))
        if clustered.size == 0:
            return []
        paths = list_matrix(clusters.column("clusters"), np.int64)  # (samples, levels)
        hierarchy = ConceptHierarchy(
            [paths[clustered, level] for level in range(paths.shape[1])],
            [int(level.max()) + 1 for level in paths.T],
            clusters.column("distance").to_numpy(zero_copy_only=False)[clustered],
        )
        del paths
        policy = self.recipe.balancing
        target = policy.target_size or max(1, round(policy.target_fraction * clustered.size))
        chosen = balanced_sample(hierarchy, target, policy.strategy, self.recipe.seed)
        left = clustered[np.setdiff1d(np.arange(clustered.size), chosen)]
        verdicts[rows[at.fill_null(0).to_numpy()[left]]] = _CODE["concept_balance"]
        for code in range(len(self._sources)):
            self._late[_CODE["concept_balance"], code] = (
                f"target {target} of {clustered.size} clustered"
            )
        return flatness(hierarchy, chosen)

    def sources(self) -> list[str]:
        """The sources with a selected row, sorted."""
        _, codes, verdicts = self._ledger()
        return sorted(self._sources[c] for c in np.unique(codes[verdicts == 0]))

    def chosen(self, source: str) -> pa.Array:
        """The selected sample ids of ``source``, sorted."""
        table, rows = self._selected(source)
        return table.column("sample_id").take(rows).combine_chunks()

    def turns(self, source: str) -> dict[str, list[int]]:
        """The turns kept of ``source``'s selected samples that lost some to a judge minimum
        (every other selected sample keeps all its turns)."""
        table, rows = self._selected(source)
        kept = table.select(["sample_id", "turns"]).take(rows)
        kept = kept.filter(pc.is_valid(kept.column("turns")))
        return dict(zip(*(kept.column(c).to_pylist() for c in kept.column_names), strict=True))

    def released(self) -> pa.Array:
        """Every selected sample id."""
        table, rows = self._selected()
        return table.column("sample_id").take(rows).combine_chunks()

    def rejects(self) -> pa.Table:
        """Every row left out, with its reason and detail, in (source, sample_id) order."""
        table, codes, verdicts = self._ledger()
        rows = np.flatnonzero(verdicts)
        # sources ranked by name stand in for the names in the (stable) sort
        rank = np.argsort(np.argsort(np.array(self._sources, dtype=object))).astype(np.int32)
        keys = pa.table({"source": rank[codes[rows]], "sample_id": table["sample_id"].take(rows)})
        order = pc.sort_indices(keys, [("source", "ascending"), ("sample_id", "ascending")])
        rows = rows[order.to_numpy()]
        del keys, order
        source_codes, reason_codes = codes[rows], verdicts[rows]
        # the details held once per (reason, source), for the rows that hold none of their own
        late = np.full(rows.size, -1, np.int64)
        texts = []
        for (reason, source), text in self._late.items():
            late[(reason_codes == reason) & (source_codes == source)] = len(texts)
            texts.append(text)
        late_detail = pa.array(texts, pa.string()).take(pa.array(late, mask=late < 0))
        return pa.table(
            {
                "sample_id": table["sample_id"].take(rows).combine_chunks(),
                "source": pa.array(self._sources, pa.string()).take(source_codes),
                "origin_key": table["origin_key"].take(rows).combine_chunks(),
                "reason": pa.array(REASONS, pa.string()).take(reason_codes - 1),
                "detail": pc.coalesce(table["detail"].take(rows).combine_chunks(), late_detail),
            },
            schema=REJECT_SCHEMA,
        )


def _source_rng(seed: int, source: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(source.encode())])
