"""Jobs in pipeline order, generated from the stage table: per-source jobs run per partition,
global ones once. The global job also refreshes the SQL statistics models and the catalog."""

import dagster as dg

from fineharbor.core import pipeline
from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.cleaning import cleaned_samples
from fineharbor.defs.decontam import benchmark_index, decontaminated_samples
from fineharbor.defs.dedup import deduplicated_samples, duplicate_clusters, image_signatures
from fineharbor.defs.ingest import raw_samples, unified_samples
from fineharbor.defs.quality import quality_classifier, scored_samples
from fineharbor.defs.release import concept_clusters, release_mix
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS

STAGE_ASSETS: dict[str, dg.AssetsDefinition] = {
    a.key.to_user_string(): a
    for a in (
        raw_samples,
        unified_samples,
        cleaned_samples,
        image_signatures,
        duplicate_clusters,
        deduplicated_samples,
        benchmark_index,
        decontaminated_samples,
        quality_classifier,
        scored_samples,
        concept_clusters,
        release_mix,
    )
}
"""Every stage's asset by name (the domain modules define them; the table names them)."""
assert list(STAGE_ASSETS) == [s.name for s in pipeline.STAGES], "a stage without its asset"

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
