"""The DuckDB catalog users open with the duckdb CLI: one view per stage and per rejects."""

import dagster as dg

from fineharbor.core.catalog import refresh_catalog
from fineharbor.core.pipeline import DECONTAMINATED, STAGES
from fineharbor.defs.resources import STAGE_TABLES, FineharborProject
from fineharbor.defs.sql_models import MODEL_TABLES, SQL_MODEL_ASSETS

# The stages up to the filtered samples; the later ones (scores, release) run in the catalog's
# own job, before it, and their views refresh with it.
_CATALOGUED = [
    dg.AssetKey(s.name) for s in STAGES[: [s.name for s in STAGES].index(DECONTAMINATED) + 1]
]


@dg.asset(
    group_name="catalog",
    kinds={"duckdb"},
    deps=[*_CATALOGUED, *SQL_MODEL_ASSETS],
    pool="duckdb_write",
    description=(
        "Refreshes `catalog.duckdb` under FINEHARBOR_HOME: a view over every stage's Parquet "
        "output, a `<stage>_rejects` view over its rejects, and a view per SQL model result. "
        "The only DuckDB file writer (pool `duckdb_write`, plus a file lock)."
    ),
)
def duckdb_catalog(project: FineharborProject) -> dg.MaterializeResult:
    views = refresh_catalog(
        project.storage,
        project.catalog_path,
        [*STAGE_TABLES, *MODEL_TABLES],
        open_database=lambda path: project.duckdb(path).get_connection(),
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(project.catalog_path)),
            "views": dg.MetadataValue.md("\n".join(f"- `{v}`" for v in views) or "(none)"),
            "view_count": len(views),
        }
    )
