"""What every stage build shares: the report a stage returns and the atomic write of its pairs.

Each domain's ``build.py`` (``core/ingest.py``, ``core/cleaning/build.py``, ``core/dedup/build.py``,
...) holds its stages' ``build_*`` functions, named by the stage table
(:mod:`fineharbor.core.pipeline`). No Dagster here, so the same functions run from the CLI, a
process pool or a distributed engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from fineharbor.core.distributed.engine import MappedPartition
from fineharbor.core.schema import REJECT_SCHEMA
from fineharbor.core.storage import Storage
from fineharbor.core.stored import stored_schema

Progress = Callable[[int], None]


@dataclass
class StageReport:
    asset: str
    partition: str | None
    rows_in: int
    kept: int
    rejected: int
    reasons: dict[str, int]
    seconds: float
    schema: pa.Schema
    extra: dict = field(default_factory=dict)
    # Columns that identify a row: per-image stages have several rows per sample.
    key: tuple[str, ...] = ("sample_id",)

    @property
    def conserved(self) -> bool:
        return self.rows_in == self.kept + self.rejected

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def write_stage(
    storage: Storage,
    asset: str,
    partition: str,
    schema: pa.Schema,
    results: Iterable[tuple[pa.Table, pa.Table]],
    rows_in: Callable[[], int],
    reject_schema: pa.Schema = REJECT_SCHEMA,
) -> StageReport:
    """Write a stream of (kept, rejected) tables atomically; `rows_in` is read after the stream.

    ``schema``: the rows as readers see them; a stage that decides stores only ``sample_id``
    and its own columns of them (:func:`~fineharbor.core.stored.stored_schema`)."""
    started = time.perf_counter()
    written = stored_schema(asset, schema)
    with storage.writer(asset, partition, written, reject_schema=reject_schema) as writer:
        for kept, rejected in results:
            writer.write(kept)
            writer.reject(rejected)
    return StageReport(
        asset=asset,
        partition=partition,
        rows_in=rows_in(),
        kept=storage.count_rows(asset, partition),
        rejected=storage.count_rows(asset, partition, kind="rejects"),
        reasons=dict(writer.reason_counts.most_common()),
        seconds=time.perf_counter() - started,
        schema=schema,
    )


def write_mapped(
    storage: Storage,
    asset: str,
    partition: str,
    schema: pa.Schema,
    mapped: MappedPartition,
    rows_in: Callable[[], int],
    reject_schema: pa.Schema = REJECT_SCHEMA,
) -> StageReport:
    """:func:`write_stage` of a mapped partition; the report says where it ran."""
    report = write_stage(storage, asset, partition, schema, mapped, rows_in, reject_schema)
    report.extra.update(mapped.info)
    return report
