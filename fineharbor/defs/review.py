"""Review wiring for Dagster: per-source overrides and review pages (the release applies the
gate itself, see defs/release.py)."""

from pathlib import Path

import dagster as dg

from fineharbor.core.config import ProjectConfig, default_config_path
from fineharbor.core.review.decisions import (
    ReviewLog,
    load_reviews,
    project_for_source,
    reviews_path,
)
from fineharbor.core.review.pages import write_review_page
from fineharbor.defs.resources import FineharborProject


def project_reviews(project: FineharborProject) -> ReviewLog:
    """The decisions file beside the project's config, validated against it."""
    config_path = Path(project.config_path) if project.config_path else default_config_path()
    return load_reviews(reviews_path(config_path), project.config)


def source_config(project: FineharborProject, source: str) -> ProjectConfig:
    """The config a per-source stage of `source` (a partition key) runs with: the reviewers'
    overrides of its source applied."""
    config = project.config
    return project_for_source(config, project_reviews(project), config.source(source).name)


def review_page_metadata(project: FineharborProject, source: str) -> dict:
    """Regenerate the source's review page; metadata links to it."""
    path = write_review_page(project.storage, project.config, project_reviews(project), source)
    storage = project.storage
    link = f"file://{path}" if storage.is_local else storage.to_uri(path)
    return {"review_page": dg.MetadataValue.url(link)}
