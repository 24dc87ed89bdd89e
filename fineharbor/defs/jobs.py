"""Jobs: per-source stages run per partition; global stages run once after them."""

import dagster as dg

from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.ingest import PER_SOURCE_ASSETS
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS

per_source_job = dg.define_asset_job(
    "per_source_job",
    selection=dg.AssetSelection.assets(*PER_SOURCE_ASSETS),
    description="Every per-source stage for one source partition.",
)

global_job = dg.define_asset_job(
    "global_job",
    selection=dg.AssetSelection.assets(*SQL_MODEL_ASSETS, duckdb_catalog),
    description="Cross-source stages and the catalog, over all partitions.",
)
