"""DuckDB as the SQL face: views over the Parquet outputs of every stage and their rejects.

Statistics and ad-hoc queries run on in-memory connections. One writer (the catalog asset,
under a file lock) refreshes ``catalog.duckdb`` so users can open it with the duckdb CLI.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
from filelock import FileLock

from fineharbor.core.storage import DATA, REJECTS, Storage


@dataclass(frozen=True)
class StageTable:
    asset: str
    partitioned: bool = True


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_statements(storage: Storage, stages: Iterable[StageTable]) -> dict[str, str]:
    """`create view` SQL for every stage (and its rejects) that has output."""
    statements = {}
    for stage in stages:
        for kind, view in ((DATA, stage.asset), (REJECTS, f"{stage.asset}_rejects")):
            files = (
                [
                    f
                    for p in storage.partitions(stage.asset, kind)
                    for f in storage.files(stage.asset, p, kind)
                ]
                if stage.partitioned
                else storage.files(stage.asset, None, kind)
            )
            if not files:
                continue
            glob = storage.glob(stage.asset, stage.partitioned, kind)
            hive = "true" if stage.partitioned else "false"
            statements[view] = (
                f"create or replace view {view} as select * from read_parquet("
                f"{_quote(glob)}, hive_partitioning={hive}, union_by_name=true)"
            )
    return statements


def connect_in_memory(storage: Storage, stages: Iterable[StageTable]) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    for statement in view_statements(storage, stages).values():
        connection.execute(statement)
    return connection


def refresh_catalog(storage: Storage, path: Path, stages: Iterable[StageTable]) -> list[str]:
    """Rebuild the catalog file's views; returns the view names. Views only: no data copied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    statements = view_statements(storage, stages)
    with FileLock(f"{path}.lock"), duckdb.connect(str(path)) as connection:
        stale = connection.execute(
            "select view_name from duckdb_views() where not internal and schema_name = 'main'"
        ).fetchall()
        for (name,) in stale:
            if name not in statements:
                connection.execute(f'drop view "{name}"')
        for statement in statements.values():
            connection.execute(statement)
    return sorted(statements)
