"""dbt-like SQL models: one `.sql` file per model, `{{ ref('name') }}` to a stage or a model.

Each model's refs give its dependencies; unknown refs and cycles are errors that name the file.
Models render to plain DuckDB SQL over views of the same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pyarrow as pa

_REF = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_NAME = re.compile(r"\A[a-z_][a-z0-9_]*\Z")


class SqlModelError(ValueError):
    """A model set that cannot run: bad name, unknown ref or cycle."""


@dataclass(frozen=True)
class SqlModel:
    name: str
    path: Path
    sql: str
    refs: tuple[str, ...]
    description: str

    def render(self) -> str:
        return _REF.sub(lambda m: f'"{m.group(1)}"', self.sql).strip().rstrip(";")


def _description(sql: str) -> str:
    lines = []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[2:].strip())
    return " ".join(lines)


def load_models(directory: Path, tables: set[str]) -> list[SqlModel]:
    """Models of `directory` in dependency order; `tables` are the refs stages provide."""
    models = {}
    for path in sorted(directory.glob("*.sql")):
        if not _NAME.match(path.stem):
            raise SqlModelError(f"{path}: model names are lowercase identifiers")
        if path.stem in tables:
            raise SqlModelError(f"{path}: model {path.stem!r} has the name of a stage table")
        sql = path.read_text()
        refs = tuple(dict.fromkeys(_REF.findall(sql)))
        models[path.stem] = SqlModel(path.stem, path, sql, refs, _description(sql))
    for model in models.values():
        unknown = [r for r in model.refs if r not in models and r not in tables]
        if unknown:
            known = ", ".join(sorted(tables | set(models)))
            raise SqlModelError(f"{model.path}: unknown ref {unknown[0]!r} (known: {known})")
    graph = {m.name: [r for r in m.refs if r in models] for m in models.values()}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise SqlModelError(
            f"{directory}: models form a cycle: {' -> '.join(error.args[1])}"
        ) from None
    return [models[name] for name in order]


def run_model(connection, model: SqlModel) -> pa.Table:
    """Execute a model on a connection whose views already cover its refs."""
    return connection.sql(model.render()).to_arrow_table()


def run_models(connection, models: list[SqlModel], names: list[str]) -> dict[str, pa.Table]:
    """Run `names` and the models they ref (in dependency order) on one connection; each result
    is registered under its model's name so models that ref it see it. `models` as loaded."""
    by_name = {m.name: m for m in models}
    needed: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in by_name:
            raise SqlModelError(
                f"no SQL model named {name!r} (known: {', '.join(sorted(by_name))})"
            )
        if name not in needed:
            needed.add(name)
            pending += [r for r in by_name[name].refs if r in by_name]
    results = {}
    for model in models:
        if model.name in needed:
            results[model.name] = run_model(connection, model)
            connection.register(model.name, results[model.name])
    return {name: results[name] for name in names}
