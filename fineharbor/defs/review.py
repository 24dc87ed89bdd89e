"""Review wiring for Dagster: per-source overrides, review pages, and the release gate check."""

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pyarrow as pa

from fineharbor.core.config import ProjectConfig, default_config_path
from fineharbor.core.review.decisions import (
    ReviewLog,
    load_reviews,
    project_for_source,
    reviews_path,
)
from fineharbor.core.review.gate import project_gate, release_violations
from fineharbor.core.review.pages import write_review_page
from fineharbor.core.storage import Storage
from fineharbor.defs.resources import FineharborProject


def project_reviews(project: FineharborProject) -> ReviewLog:
    """The decisions file beside the project's config, validated against it."""
    config_path = Path(project.config_path) if project.config_path else default_config_path()
    return load_reviews(reviews_path(config_path), project.config)


def source_config(project: FineharborProject, source: str) -> ProjectConfig:
    """The config a per-source stage of `source` runs with: reviewers' overrides applied."""
    return project_for_source(project.config, project_reviews(project), source)


def review_page_metadata(project: FineharborProject, source: str) -> dict:
    """Regenerate the source's review page; metadata links to it."""
    path = write_review_page(project.storage, project.config, project_reviews(project), source)
    link = f"file://{path}" if project.storage.is_local else path
    return {"review_page": dg.MetadataValue.url(link)}


def read_release_sources(storage: Storage, asset: str) -> pa.Table:
    """`sample_id` and `source` of an unpartitioned release written through Storage."""
    return storage.read_table(asset, columns=["sample_id", "source"])


def release_review_check(
    asset: str = "release_mix",
    read_release: Callable[[Storage, str], pa.Table] = read_release_sources,
) -> dg.AssetChecksDefinition:
    """A blocking check for the release: no sample of an unreviewed, rejected or stale-approved
    source, and no human-flagged sample. The release itself should select sources with
    ``project_gate`` and filter rows with ``apply_human_flags``; this check proves it did."""

    @dg.asset_check(
        asset=asset,
        name="reviewed_sources_only",
        blocking=True,
        description=(
            "every released sample comes from a source a person approved (for its current "
            "mapping) and was not flagged by a reviewer (reviews.yaml)"
        ),
    )
    def _check(project: FineharborProject) -> dg.AssetCheckResult:
        reviews = project_reviews(project)
        gate = project_gate(reviews, project.config)
        problems = release_violations(read_release(project.storage, asset), reviews, project.config)
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={
                "allowed_sources": ", ".join(gate.allowed) or "none",
                "blocked_sources": dg.MetadataValue.json(gate.blocked),
                "violations": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            },
        )

    return _check
