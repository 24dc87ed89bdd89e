"""SQL models: every ``dbt_like_sql/`` model over the stage tables, vs DuckDB scanning them.

    .venv/bin/python bench/sql_models.py [--n 12000]

Input: the release benchmark's synthetic pipeline outputs (``bench/release.py``: release input,
deduplicated and decontaminated samples, signatures) of ``n`` samples, with the release built
once, untimed. Timed on one in-memory DuckDB connection over the same Parquet files:

* stage: every SQL model whose refs the synthetic input holds (the note says how many; models
  over the ingest and dedup stages have no input here), in dependency order (``load_models`` +
  ``run_models``);
* baseline: ``count(*)`` of every stage view (and rejects view) the models read: the scan
  floor, without the models' joins and aggregations.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, best_time
from bench.release import build, prepare
from fineharbor.core.catalog import connect_in_memory, view_statements
from fineharbor.core.sql_models import load_models, run_models
from fineharbor.core.storage import Storage

SIZES = {"tiny": 60, "small": 1_500, "large": 12_000}


def all_models(storage: Storage) -> int:
    from fineharbor.defs.resources import STAGE_TABLES
    from fineharbor.defs.sql_models import SQL_DIR

    views = {t.asset for t in STAGE_TABLES} | {f"{t.asset}_rejects" for t in STAGE_TABLES}
    models = load_models(SQL_DIR, views)
    present = set(view_statements(storage, STAGE_TABLES))
    runnable: set[str] = set()
    for model in models:  # dependency order: a model runs when every ref is here
        if all(r in present or r in runnable for r in model.refs):
            runnable.add(model.name)
    with connect_in_memory(storage, STAGE_TABLES) as connection:
        tables = run_models(connection, models, sorted(runnable))
    return len(tables)


def scans(storage: Storage) -> int:
    from fineharbor.defs.resources import STAGE_TABLES

    names = list(view_statements(storage, STAGE_TABLES))
    with connect_in_memory(storage, STAGE_TABLES) as connection:
        for name in names:
            connection.execute(f'select count(*) from "{name}"').fetchall()
    return len(names)


def run(size: int, repeats: int = 2) -> list[Measurement]:
    with tempfile.TemporaryDirectory() as tmp:
        config, storage = prepare(Path(tmp) / "home", size)
        build(config, storage)
        seconds, models = best_time(lambda: all_models(storage), repeats)
        base, views = best_time(lambda: scans(storage), repeats)
        return [
            Measurement(
                "sql_models",
                size,
                seconds,
                f"DuckDB count(*) of the {views} views",
                base,
                "samples",
                f"{models} models",
            )
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=SIZES["large"])
    args = parser.parse_args(argv)
    (m,) = run(args.n)
    print(
        f"{m.rows:,} samples: {m.note} in {m.seconds:.3f} s; scans of every view "
        f"{m.baseline_seconds:.3f} s ({m.ratio:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
