"""Release: ``build_release_mix`` (selection + shards + WebDataset + card + manifest) vs a plain
pyarrow read and write of the same input.

    .venv/bin/python bench/release.py [--n 20000]

The input is the release tests' synthetic ``scored_samples`` (``write_input``: two train sources,
caption pairs with one 64x48 JPEG and 3-turn conversations, every score column, plus the stage
outputs the card's SQL models read), ``n`` samples in all. Timed, same run, same bytes:

* stage: ``build_release_mix`` with a recipe using every filter (CLIP score bounds, quality
  minimum, turn ratings), Parquet shards of 1,000 rows and WebDataset tars of the caption pairs;
* baseline: ``pyarrow.parquet.read_table`` of every input partition and ``write_table`` of the
  same table to one file (the I/O floor: no selection, no card, no manifest).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, best_time
from fineharbor.core.release.build import RELEASE_INPUT_ASSET, build_release_mix
from fineharbor.core.storage import Storage

SIZES = {"tiny": 60, "small": 1_500, "large": 12_000}
RECIPE = """
  name: bench
  version: "1.0"
  seed: 0
  clip_score_min: 0.2
  clip_score_max: 0.45
  quality_min: 0.5
  min_ratings: {relevance: 2}
  shard_rows: 1000
  webdataset: true
"""


def prepare(home: Path, size: int):
    """Storage holding ``size`` release-input samples, and the project with the bench recipe."""
    from fineharbor.testing.release_input import project, write_input

    os.environ["FINEHARBOR_HOME"] = str(home)
    storage = Storage(str(home))
    write_input(storage, scored=True, n_pairs=size - size // 3, n_chats=size // 3)
    return project(home, RECIPE), storage


def build(config, storage: Storage):
    from fineharbor.defs.resources import STAGE_TABLES
    from fineharbor.defs.sql_models import SQL_DIR

    return build_release_mix(config, storage, STAGE_TABLES, SQL_DIR)


def read_write(storage: Storage, sources: list[str], out: Path) -> int:
    files = [f for s in sources for f in storage.files(RELEASE_INPUT_ASSET, s)]
    table = pa.concat_tables(pq.read_table(f) for f in files)
    pq.write_table(table, out)
    return table.num_rows


def run(size: int, repeats: int = 1) -> list[Measurement]:
    with tempfile.TemporaryDirectory() as tmp:
        config, storage = prepare(Path(tmp) / "home", size)
        seconds, result = best_time(lambda: build(config, storage), repeats)
        sources = [
            s.name for s in config.sources if storage.has_partition(RELEASE_INPUT_ASSET, s.name)
        ]
        base, rows = best_time(
            lambda: read_write(storage, sources, Path(tmp) / "copy.parquet"), repeats
        )
        assert rows == size, f"read {rows} input rows, expected {size}"
        note = f"{result.index.num_rows} released, {result.rejects.num_rows} rejected"
        return [
            Measurement(
                "release", size, seconds, "pyarrow read + write of the input", base, "samples", note
            )
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=SIZES["large"])
    args = parser.parse_args(argv)
    (m,) = run(args.n)
    print(
        f"{m.rows:,} input samples: release {m.rate:,.0f} samples/s, pyarrow read + write "
        f"{m.rows / m.baseline_seconds:,.0f} samples/s ({m.ratio:.2f}x); {m.note}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
