"""Jobs in pipeline order, generated from the stage table: per-source jobs run per partition,
global ones once. The global job also refreshes the SQL statistics models and the catalog."""

import dagster as dg

from fineharbor.core import pipeline
from fineharbor.defs import cleaning, decontam, dedup, ingest, quality, release
from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.quality import QualityModelsResource
from fineharbor.defs.resources import EmbedderResource, FineharborProject, WorkerPoolsResource
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS

DOMAINS = (ingest, cleaning, dedup, decontam, quality, release)
"""The modules that define the stages' assets, one per domain."""

_DEFINED = {
    a.key.to_user_string(): a
    for a in dg.load_assets_from_modules(DOMAINS)
    if isinstance(a, dg.AssetsDefinition)
}
STAGE_ASSETS: dict[str, dg.AssetsDefinition] = {s.name: _DEFINED[s.name] for s in pipeline.STAGES}
"""Every stage's asset by name, in pipeline order (a stage without its asset fails here)."""

_AFTER_STAGES = {"global_job": [*SQL_MODEL_ASSETS, duckdb_catalog]}

JOB_ASSETS: dict[str, list[dg.AssetsDefinition]] = {
    job.name: [
        *(STAGE_ASSETS[s.name] for s in pipeline.job_stages(job.name)),
        *_AFTER_STAGES.get(job.name, []),
    ]
    for job in pipeline.JOBS
}
"""Each job's assets, in pipeline order."""

JOBS = [
    dg.define_asset_job(
        job.name,
        selection=dg.AssetSelection.assets(*JOB_ASSETS[job.name]),
        description=job.description,
    )
    for job in pipeline.JOBS
]

PIPELINE = [(job.name, pipeline.per_partition(job.name)) for job in pipeline.JOBS]
"""Job names in the order that runs the whole pipeline, and whether each runs per partition."""

ASSETS = [asset for job in pipeline.JOBS for asset in JOB_ASSETS[job.name]]
"""Every asset of the project, in pipeline order."""


def stage_resources(project: FineharborProject | None = None) -> dict:
    """The resources every stage's asset may require, by key: the project, the models loaded
    once per run, and the warm worker pools."""
    return {
        "project": project or FineharborProject(),
        "embedder": EmbedderResource(),
        "pools": WorkerPoolsResource(),
        "models": QualityModelsResource(),
    }
