"""What `dagster dev -w workspace.yaml` loads: every fineharbor asset, check, job and sensor."""

import dagster as dg

from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.ingest import CROSS_SOURCE_ASSETS, PER_SOURCE_ASSETS
from fineharbor.defs.jobs import (
    cross_source_job,
    filter_job,
    global_job,
    per_source_job,
    quality_model_job,
    scoring_job,
)
from fineharbor.defs.quality import QUALITY_MODEL_ASSETS, SCORING_ASSETS, QualityModelsResource
from fineharbor.defs.resources import EmbedderResource, FineharborProject
from fineharbor.defs.sensors import source_sensor
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS

defs = dg.Definitions(
    assets=[
        *PER_SOURCE_ASSETS,
        *CROSS_SOURCE_ASSETS,
        *SQL_MODEL_ASSETS,
        duckdb_catalog,
        *QUALITY_MODEL_ASSETS,
        *SCORING_ASSETS,
    ],
    jobs=[per_source_job, cross_source_job, filter_job, global_job, quality_model_job, scoring_job],
    sensors=[source_sensor],
    resources={
        "project": FineharborProject(),
        "embedder": EmbedderResource(),
        "models": QualityModelsResource(),
    },
)
