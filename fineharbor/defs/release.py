"""Concept clusters and the release: the last global stages, before the SQL models and catalog."""

import dagster as dg

from fineharbor.core.pipeline import CONCEPTS, RELEASE
from fineharbor.core.release.build import (
    RELEASE_INPUT_ASSET,
    build_concept_clusters,
    build_release_mix,
)
from fineharbor.core.release.select import left_out_by
from fineharbor.core.review.gate import release_violations, review_release_gate
from fineharbor.defs.factory import global_stage
from fineharbor.defs.reporting import CHECK_CONSERVED, column_schema, markdown_table
from fineharbor.defs.resources import STAGE_TABLES, FineharborProject
from fineharbor.defs.review import project_reviews
from fineharbor.defs.sql_models import SQL_DIR

CHECK_SIZE = "release_size_within_limits"
CHECK_CLEAN = "release_holds_no_rejected_or_benchmark_sample"
CHECK_REVIEWED = "reviewed_sources_only"
AWAITING_REVIEW = "awaiting_review"


@global_stage(CONCEPTS)
def concept_clusters(project: FineharborProject) -> dg.MaterializeResult:
    table, stats = build_concept_clusters(project.config, project.storage)
    levels = stats["levels"]
    summary = (
        f"{stats['clustered']} of {stats['samples']} samples clustered on "
        f"`{stats['embedding']}`\n\n"
        + markdown_table(
            ["level", "clusters", "largest", "median"],
            [(lv["level"], lv["clusters"], lv["max_size"], lv["median_size"]) for lv in levels],
        )
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": column_schema(table.schema),
            "embedding": stats["embedding"],
            "samples_without_embedding": stats["samples"] - stats["clustered"],
            "levels": dg.MetadataValue.json(levels),
            "summary": dg.MetadataValue.md(summary),
        }
    )


@global_stage(
    RELEASE,
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_SIZE,
            asset=RELEASE,
            blocking=True,
            description="the release holds between release.min_samples and release.max_samples",
        ),
        dg.AssetCheckSpec(
            CHECK_CLEAN,
            asset=RELEASE,
            blocking=True,
            description="no released sample is a rejected one or comes from a benchmark source",
        ),
        dg.AssetCheckSpec(
            CHECK_CONSERVED,
            asset=RELEASE,
            blocking=True,
            description="release input rows = released + left out (with a reason)",
        ),
        dg.AssetCheckSpec(
            CHECK_REVIEWED,
            asset=RELEASE,
            blocking=True,
            description="every released sample comes from a source a person approved in "
            "reviews.yaml (for its current mapping) and was not flagged by a reviewer",
        ),
    ],
)
def release_mix(project: FineharborProject) -> dg.MaterializeResult:
    config, storage = project.config, project.storage
    recipe = config.release
    reviews = project_reviews(project)
    gate = review_release_gate(reviews, config) if recipe.require_review else None
    result = build_release_mix(config, storage, STAGE_TABLES, SQL_DIR, gate)
    if not result.written:
        return _awaiting_review_result(result)
    violations = release_violations(result.index, reviews, config) if gate else []
    released = result.index.num_rows
    released_and_rejected = result.released_and_rejected()
    from_benchmark = result.released_from(s.name for s in config.sources if s.role == "benchmark")
    too_big = recipe.max_samples is not None and released > recipe.max_samples
    composition = result.tables["release_composition"]
    reasons = result.left_out_by_reason()
    size_ok = not too_big and released >= recipe.min_samples
    checks = [
        dg.AssetCheckResult(
            check_name=CHECK_SIZE,
            passed=size_ok,
            description=None if size_ok else _size_problem(result, recipe, reasons),
            metadata={
                "samples": released,
                "min_samples": recipe.min_samples,
                "max_samples": recipe.max_samples or -1,
                "left_out_by": left_out_by(reasons) or "nothing",
            },
        ),
        dg.AssetCheckResult(
            check_name=CHECK_CLEAN,
            passed=not released_and_rejected and not from_benchmark,
            metadata={
                "released_and_rejected": released_and_rejected,
                "from_benchmark_sources": from_benchmark,
            },
        ),
        dg.AssetCheckResult(
            check_name=CHECK_CONSERVED,
            passed=result.input_rows == released + result.rejects.num_rows,
            metadata={
                "input_rows": result.input_rows,
                "released": released,
                "left_out": result.rejects.num_rows,
            },
        ),
        dg.AssetCheckResult(
            check_name=CHECK_REVIEWED,
            passed=not violations,
            metadata={
                "require_review": recipe.require_review,
                "blocked_sources": dg.MetadataValue.json(dict(gate.blocked) if gate else {}),
                "violations": dg.MetadataValue.md(
                    "\n".join(f"- {v}" for v in violations) or "none"
                ),
            },
        ),
    ]
    files = [(f.path, f.rows, f.bytes, f.sha256[:12]) for f in result.files]
    signals = result.facts.signals
    distributions = (
        "\n\n### Score distributions (release candidates)\n"
        + markdown_table(signals.column_names, [tuple(r.values()) for r in signals.to_pylist()])
        if signals is not None and signals.num_rows
        else ""
    )
    summary = (
        f"**{recipe.name} {recipe.version}**: {released} samples of {result.input_rows} in "
        f"`{RELEASE_INPUT_ASSET}` at `{result.path}`\n\n### Composition\n"
        + markdown_table(
            composition.column_names, [tuple(r.values()) for r in composition.to_pylist()]
        )
        + "\n\n### Left out\n"
        + markdown_table(["reason", "samples"], sorted(reasons.items()))
        + distributions
        + "\n\n### Files\n"
        + markdown_table(["path", "rows", "bytes", "sha256"], files)
    )
    metadata = {
        "dagster/row_count": released,
        "dagster/column_schema": column_schema(result.index.schema),
        "path": dg.MetadataValue.path(result.path),
        "left_out_by_reason": dg.MetadataValue.json(reasons),
        "files": len(result.files),
        "summary": dg.MetadataValue.md(summary),
        **result.extra,  # where the shard-writing tasks ran: task_engine, tasks
    }
    if result.facts.diversity is not None:
        metadata["diversity"] = round(result.facts.diversity, 4)
    if result.facts.flatness:
        top = result.facts.flatness[-1]
        metadata["concept_max_median_ratio_before"] = top["max_median_ratio_before"]
        metadata["concept_max_median_ratio_after"] = top["max_median_ratio_after"]
        metadata["concept_flatness"] = dg.MetadataValue.json(result.facts.flatness)
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _size_problem(result, recipe, reasons: dict[str, int]) -> str:
    """Why the release size check failed, naming the filter that emptied or shrank it."""
    released = result.index.num_rows
    if released > (recipe.max_samples or released):
        return f"{released} samples, more than release.max_samples {recipe.max_samples}"
    if not result.input_rows:
        return (
            f"the release input {RELEASE_INPUT_ASSET} holds no sample: no train source has been "
            "scored yet (or every partition failed before it)"
        )
    return (
        f"{released} of {result.input_rows} samples, fewer than release.min_samples "
        f"{recipe.min_samples}; left out by {left_out_by(reasons)}"
    )


def _awaiting_review_result(result) -> dg.MaterializeResult:
    """No train source is approved yet: nothing is released, and that is not a failure of a
    new project; the checks pass and the metadata says which sources await a review."""
    waiting = result.awaiting_review
    commands = "\n".join(
        f"- `fineharbor review {name} --approve`: {why}" for name, why in waiting.items()
    )
    summary = (
        f"**Not written**: no train source is approved yet. {result.input_rows} input samples "
        f"left out (`source_not_approved`). Look at each source's review page, then:\n\n{commands}"
    )
    passed = {"samples": 0, "written": False}
    checks = [
        dg.AssetCheckResult(
            check_name=name,
            passed=True,
            description="release not written: no source approved yet",
            metadata=passed,
        )
        for name in (CHECK_SIZE, CHECK_CLEAN, CHECK_REVIEWED)
    ]
    checks.append(
        dg.AssetCheckResult(
            check_name=CHECK_CONSERVED,
            passed=result.input_rows == result.rejects.num_rows,
            metadata={"input_rows": result.input_rows, "left_out": result.rejects.num_rows},
        )
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": 0,
            "written": False,
            AWAITING_REVIEW: dg.MetadataValue.json(waiting),
            "summary": dg.MetadataValue.md(summary),
        },
        check_results=checks,
    )


RELEASE_ASSETS = [concept_clusters, release_mix]
