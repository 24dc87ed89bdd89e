"""The dataset card (README.md): the Hub's YAML header and tables whose numbers come from the
SQL models (``release_composition``, ``release_rejects``, ``contamination_report``,
``ratings_distribution``), run on the very rows the release holds, and the distribution of each
score over the candidates the thresholds were applied to (:func:`signal_distribution`)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from html import escape

import polars as pl
import pyarrow as pa
import yaml

from fineharbor.core.release.params import ReleaseRecipe
from fineharbor.core.release.select import THRESHOLDS

CARD_MODELS = (
    "release_composition",
    "release_rejects",
    "contamination_report",
    "ratings_distribution",
)

_FILTER_REASONS = {
    **{t.reason: (t.label, t.setting) for t in THRESHOLDS},
    "rating_below_min": ("judge rating minimums (turn level)", None),
    "source_weight": ("source weight", None),
    "source_cap": ("source cap", None),
    "concept_balance": ("balanced concept sampling", None),
    "source_not_in_recipe": ("source not in the recipe", None),
    "benchmark_source": ("benchmark source", None),
}


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DISTRIBUTION_COLUMNS = [
    "signal",
    "scored",
    "null",
    "min",
    *[f"p{round(q * 100):02d}" for q in QUANTILES],
    "max",
    "threshold",
    "outside",
]


def signal_distribution(signals: pa.Table, recipe: ReleaseRecipe) -> pa.Table:
    """Per score column of the candidates (the release-input rows the thresholds were applied
    to): how many carry it, its quantiles, the recipe's thresholds on it and how many candidates
    fall outside them (a sample outside two thresholds counts for each; the filters table says
    which one removed it). Columns that no candidate carries and no threshold reads are left
    out (a signal whose model is not configured)."""
    frame = pl.from_arrow(signals)
    assert isinstance(frame, pl.DataFrame)
    rows = []
    for column in signals.schema.names:
        on_it = [t for t in THRESHOLDS if t.column == column and t.limit(recipe) is not None]
        values = pl.col(column).cast(pl.Float64)
        outside = pl.lit(False)
        for t in on_it:
            limit = t.limit(recipe)
            outside = outside | (values < limit if t.minimum else values > limit)
        if on_it and recipe.require_scores:
            outside = outside | values.is_null()
        stats = frame.select(
            values.count().alias("scored"),
            values.null_count().alias("null"),
            values.min().alias("min"),
            *[values.quantile(q, "linear").alias(f"p{round(q * 100):02d}") for q in QUANTILES],
            values.max().alias("max"),
            outside.fill_null(False).sum().alias("outside"),
        ).row(0, named=True)
        if not stats["scored"] and not on_it:
            continue
        limits = ", ".join(f"{'min' if t.minimum else 'max'} {t.limit(recipe)}" for t in on_it)
        rows.append({"signal": column, **stats, "threshold": limits or "off"})
    schema = pa.schema(
        [
            ("signal", pa.string()),
            ("scored", pa.int64()),
            ("null", pa.int64()),
            *[(c, pa.float64()) for c in DISTRIBUTION_COLUMNS[3:-2]],
            ("threshold", pa.string()),
            ("outside", pa.int64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema).select(DISTRIBUTION_COLUMNS)


@dataclass
class CardFacts:
    """What the card says beyond the SQL tables: computed in Python, labelled as such."""

    input_asset: str
    configs: list[str]
    diversity: float | None
    diversity_embedding: str
    flatness: list[dict]
    cleaning_notes: list[str] = dataclasses.field(default_factory=list)  # rule scopes
    # sources released in the OBELICS layout: their own configs, outside `default` (other columns)
    interleaved: list[str] = dataclasses.field(default_factory=list)
    signals: pa.Table | None = None  # signal_distribution of the candidates


def number(value: object) -> str:
    """How a number is printed in the card (tests parse it back and compare with the model)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


# Backslash first, so the escapes added after it stay escapes. Brackets and backticks would
# open links, remote images (``![](https://...)``: a request from every reader of the card on
# the Hub) and code spans that swallow the cell's other escapes.
_MARKDOWN = re.compile(r"([\\`|\[\]])")
_NEWLINES = re.compile(r"\r\n|\r|\n")


def cell(value: object) -> str:
    """A markdown table cell from data (source names, licenses, reasons, thresholds): one line,
    no HTML, no column break, no link."""
    text = escape(number(value), quote=False)
    return _NEWLINES.sub(" ", _MARKDOWN.sub(r"\\\1", text))


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def _table(table: pa.Table, columns: list[str]) -> str:
    lines = [_row(columns), "|" + "---|" * len(columns)]
    lines += [_row([row[c] for c in columns]) for row in table.select(columns).to_pylist()]
    return "\n".join(lines)


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")]
    bounds += [(1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "100M<n<1B"


def _header(recipe: ReleaseRecipe, composition: pa.Table, facts: CardFacts) -> str:
    per_source = [r for r in composition.to_pylist() if r["source"] != "*"]
    licenses = sorted({r["license"] for r in per_source}) or ["unknown"]
    total = sum(r["samples"] for r in per_source)
    paths = [f"data/{s}/train-*.parquet" for s in facts.configs if s not in facts.interleaved]
    configs = [
        {
            "config_name": "default",
            "data_files": [
                {
                    "split": "train",
                    "path": paths if facts.interleaved and paths else "data/*/train-*.parquet",
                }
            ],
        }
    ]
    configs += [
        {"config_name": s, "data_files": [{"split": "train", "path": f"data/{s}/train-*.parquet"}]}
        for s in facts.configs
    ]
    header = {
        "pretty_name": recipe.name,
        "license": licenses[0] if len(licenses) == 1 else licenses,
        "task_categories": ["image-text-to-text"],
        "size_categories": [size_category(total)],
        "tags": ["fineharbor", "vision-language"],
        "configs": configs,
    }
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n"


def _filters(recipe: ReleaseRecipe, rejects: pa.Table) -> str:
    counts: dict[str, int] = {}
    for row in rejects.to_pylist():
        counts[row["reason"]] = counts.get(row["reason"], 0) + row["samples"]
    minimums = ", ".join(f"{a} >= {m}" for a, m in recipe.min_ratings.active().items())
    thresholds = {
        "rating_below_min": minimums or "off",
        "source_weight": ", ".join(f"{s.name}: {s.weight}" for s in recipe.sources) or "off",
        "source_cap": ", ".join(f"{s.name}: {s.cap}" for s in recipe.sources if s.cap is not None)
        or "off",
        "concept_balance": (
            f"target {recipe.balancing.target_size or recipe.balancing.target_fraction}, "
            f"strategy {recipe.balancing.strategy}"
            if recipe.balancing.enabled
            else "off"
        ),
        "source_not_in_recipe": ", ".join(s.name for s in recipe.sources) or "all train sources",
        "benchmark_source": "role: benchmark",
    }
    lines = ["| filter | threshold | reason code | samples removed |", "|---|---|---|---|"]
    for reason, (label, field) in _FILTER_REASONS.items():
        threshold = getattr(recipe, field) if field else thresholds[reason]
        shown = "off" if threshold is None else threshold
        lines.append(
            f"| {cell(label)} | {cell(shown)} | `{reason}` | {cell(counts.get(reason, 0))} |"
        )
    return "\n".join(lines)


def render_card(recipe: ReleaseRecipe, tables: dict[str, pa.Table], facts: CardFacts) -> str:
    composition = tables["release_composition"]
    ratings = tables["ratings_distribution"]
    parts = [
        _header(recipe, composition, facts),
        f"# {recipe.name} {recipe.version}\n",
        (recipe.description + "\n") if recipe.description else "",
        "Curated with fineharbor from the `" + facts.input_asset + "` stage (cleaned, "
        "deduplicated, decontaminated). Columns follow FineVision: `images`, `texts` "
        "(`user` / `assistant` turns), `source` and per-axis judge `*_ratings` / `*_min`. "
        f"Seed {recipe.seed}; `manifest.json` lists every file with its sha256.\n",
        "## Size and licenses\n\nFrom the `release_composition` model.\n",
        _table(composition, ["source", "license", "samples", "images", "turns", "share"]) + "\n",
        "## Filters\n\nThresholds from the release recipe; removals from the `release_rejects` "
        "model.\n",
        _filters(recipe, tables["release_rejects"]) + "\n",
        "".join(note + "\n" for note in facts.cleaning_notes),
        "## Score distributions\n\nEach score over the release candidates (train rows the "
        "thresholds were applied to), computed in Python from the release input; `outside`: "
        "candidates beyond the recipe's thresholds on it.\n",
        (
            _table(facts.signals, DISTRIBUTION_COLUMNS)
            if facts.signals is not None and facts.signals.num_rows
            else "No candidate carries a score."
        )
        + "\n",
        "## Benchmark contamination\n\nFrom the `contamination_report` model (FineVision's "
        "table: flagged samples were removed before the release; `*` rows are totals).\n",
        _table(
            tables["contamination_report"],
            [
                "source",
                "benchmark",
                "samples",
                "images",
                "samples_flagged",
                "images_flagged",
                "image_rate",
                "sample_rate",
            ],
        )
        + "\n",
        "## Judge ratings\n\nFrom the `ratings_distribution` model (turns of the release).\n",
        (
            _table(ratings, ["axis", "rating", "turns", "share"])
            if ratings.num_rows
            else "The release input carries no judge ratings."
        )
        + "\n",
        "## Diversity and concept balance\n\n"
        + (
            f"FineVision's diversity score over the released images' `{facts.diversity_embedding}` "
            f"vectors: {number(facts.diversity)}.\n"
            if facts.diversity is not None
            else "No embedding was computed, so no diversity score.\n"
        ),
        (
            "Cluster sizes before and after balanced sampling (max / median per level):\n\n"
            + "\n".join(
                f"- level {f['level']}: {f['clusters']} clusters, ratio "
                f"{number(f['max_median_ratio_before'])} -> {number(f['max_median_ratio_after'])}"
                for f in facts.flatness
            )
            + "\n"
            if facts.flatness
            else "Balanced concept sampling was off.\n"
        ),
    ]
    return "\n".join(p for p in parts if p)
