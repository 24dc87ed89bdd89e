"""Jobs in pipeline order: per-source stages run per partition, cross-source stages once."""

import dagster as dg

from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.ingest import CROSS_SOURCE_ASSETS, FIRST_PASS_ASSETS, SECOND_PASS_ASSETS
from fineharbor.defs.quality import QUALITY_MODEL_ASSETS, SCORING_ASSETS
from fineharbor.defs.release import RELEASE_ASSETS
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS

per_source_job = dg.define_asset_job(
    "per_source_job",
    selection=dg.AssetSelection.assets(*FIRST_PASS_ASSETS),
    description="Ingest, clean and sign one source partition.",
)

cross_source_job = dg.define_asset_job(
    "cross_source_job",
    selection=dg.AssetSelection.assets(*CROSS_SOURCE_ASSETS),
    description="Duplicate clusters and the benchmark index, over every source.",
)

filter_job = dg.define_asset_job(
    "filter_job",
    selection=dg.AssetSelection.assets(*SECOND_PASS_ASSETS),
    description="Deduplicate and decontaminate one source partition.",
)

quality_model_job = dg.define_asset_job(
    "quality_model_job",
    selection=dg.AssetSelection.assets(*QUALITY_MODEL_ASSETS),
    description="Train the learned quality classifier over every train source.",
)

scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=dg.AssetSelection.assets(*SCORING_ASSETS),
    description="CLIP score, learned quality score and judge ratings of one source partition.",
)

global_job = dg.define_asset_job(
    "global_job",
    selection=dg.AssetSelection.assets(*RELEASE_ASSETS, *SQL_MODEL_ASSETS, duckdb_catalog),
    description="Concept clusters, the release mix, SQL statistics models and the DuckDB catalog.",
)

PIPELINE = [
    ("per_source_job", True),
    ("cross_source_job", False),
    ("filter_job", True),
    ("quality_model_job", False),
    ("scoring_job", True),
    ("global_job", False),
]
"""Job names in the order that runs the whole pipeline, and whether each runs per partition."""

ASSETS = [
    *FIRST_PASS_ASSETS,
    *CROSS_SOURCE_ASSETS,
    *SECOND_PASS_ASSETS,
    *QUALITY_MODEL_ASSETS,
    *SCORING_ASSETS,
    *RELEASE_ASSETS,
    *SQL_MODEL_ASSETS,
    duckdb_catalog,
]
"""Every asset of the project, in pipeline order."""

JOBS = [per_source_job, cross_source_job, filter_job, quality_model_job, scoring_job, global_job]
