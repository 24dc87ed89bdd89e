"""What `dagster dev -w workspace.yaml` loads: every fineharbor asset, check, job and sensor."""

import dagster as dg

from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.ingest import PER_SOURCE_ASSETS
from fineharbor.defs.jobs import global_job, per_source_job
from fineharbor.defs.resources import FineharborProject
from fineharbor.defs.sensors import source_sensor
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS

defs = dg.Definitions(
    assets=[*PER_SOURCE_ASSETS, *SQL_MODEL_ASSETS, duckdb_catalog],
    jobs=[per_source_job, global_job],
    sensors=[source_sensor],
    resources={"project": FineharborProject()},
)
