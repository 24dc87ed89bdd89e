"""One Dagster asset per dbt_like_sql/ model; its deps come from the model's refs."""

import hashlib
from pathlib import Path

import dagster as dg

from fineharbor.core.catalog import StageTable, create_views
from fineharbor.core.sql_models import SqlModel, load_models, run_model
from fineharbor.defs.reporting import column_schema, markdown_table
from fineharbor.defs.resources import STAGE_TABLES, FineharborProject

SQL_DIR = Path(__file__).resolve().parents[2] / "dbt_like_sql"


def _ref_key(ref: str) -> dg.AssetKey:
    """Rejects views belong to their stage's asset."""
    return dg.AssetKey(ref.removesuffix("_rejects"))


def _model_asset(model: SqlModel, model_tables: list[StageTable]) -> dg.AssetsDefinition:
    @dg.asset(
        name=model.name,
        group_name="statistics",
        kinds={"duckdb", "sql", "parquet"},
        deps=[_ref_key(r) for r in model.refs],
        code_version=hashlib.sha256(model.sql.encode()).hexdigest()[:12],
        description=f"{model.description}\n\nSQL model `dbt_like_sql/{model.path.name}`.",
    )
    def _asset(project: FineharborProject) -> dg.MaterializeResult:
        storage = project.storage
        tables = [*STAGE_TABLES, *model_tables]
        with project.duckdb_connection() as connection:
            table = run_model(create_views(connection, storage, tables, only=model.refs), model)
        with storage.writer(model.name, None, table.schema) as writer:
            writer.write(table)
        preview = [tuple(row.values()) for row in table.slice(0, 20).to_pylist()]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": table.num_rows,
                "dagster/column_schema": column_schema(table.schema),
                "result": dg.MetadataValue.md(markdown_table(table.column_names, preview)),
                "sql": dg.MetadataValue.md(f"```sql\n{model.render()}\n```"),
            }
        )

    return _asset


def build_sql_model_assets(directory: Path = SQL_DIR) -> list[dg.AssetsDefinition]:
    stage_views = {t.asset for t in STAGE_TABLES} | {f"{t.asset}_rejects" for t in STAGE_TABLES}
    models = load_models(directory, stage_views)
    tables = [StageTable(m.name, partitioned=False) for m in models]
    return [_model_asset(model, tables) for model in models]


SQL_MODEL_ASSETS = build_sql_model_assets()
MODEL_TABLES = [StageTable(a.key.path[-1], partitioned=False) for a in SQL_MODEL_ASSETS]
