"""Per-source stages as plain functions: read the upstream partition, apply core logic, write.

Each returns a :class:`StageReport` that the orchestrator turns into metadata and checks. No
Dagster here, so the same functions run from the CLI, a process pool or a distributed engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from fineharbor.core.cleaning import CLEANED_SCHEMA, clean_batches
from fineharbor.core.config import ProjectConfig
from fineharbor.core.mapping import map_batch
from fineharbor.core.readers import read_source
from fineharbor.core.schema import RAW_SCHEMA, UNIFIED_SCHEMA
from fineharbor.core.storage import Storage

Progress = Callable[[int], None]

RAW = "raw_samples"
UNIFIED = "unified_samples"
CLEANED = "cleaned_samples"

# Cleaning decodes every image: small batches keep all worker processes busy.
CLEAN_BATCH_ROWS = 64


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
) -> StageReport:
    """Write a stream of (kept, rejected) tables atomically; `rows_in` is read after the stream."""
    started = time.perf_counter()
    with storage.writer(asset, partition, schema) as writer:
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


def build_raw_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Read a source as it is, fetching its images: the first, per-source stage."""
    source = project.source(source_name)
    seen = 0

    def counted() -> Iterable[tuple[pa.Table, pa.Table]]:
        nonlocal seen
        for kept, rejected in read_source(source, project.stages.ingest, progress):
            seen += kept.num_rows + rejected.num_rows
            yield kept, rejected

    return write_stage(storage, RAW, source_name, RAW_SCHEMA, counted(), lambda: seen)


def build_unified_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Map raw records into the unified schema with the source's declared mapping."""
    source = project.source(source_name)

    def mapped() -> Iterable[tuple[pa.Table, pa.Table]]:
        batches = storage.iter_batches(RAW, source_name, batch_size=source.batch_size)
        for batch in _counted(batches, progress):
            yield map_batch(batch, source.mapping)

    return write_stage(
        storage,
        UNIFIED,
        source_name,
        UNIFIED_SCHEMA,
        mapped(),
        lambda: storage.count_rows(RAW, source_name),
    )


def _counted(
    batches: Iterable[pa.RecordBatch], progress: Progress | None
) -> Iterable[pa.RecordBatch]:
    for batch in batches:
        yield batch
        if progress:
            progress(batch.num_rows)


def build_cleaned_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """FineVision / LAION / DanQing filters and resizing, in worker processes."""
    project.source(source_name)  # an unknown source fails here, clearly
    batches = storage.iter_batches(UNIFIED, source_name, batch_size=CLEAN_BATCH_ROWS)
    return write_stage(
        storage,
        CLEANED,
        source_name,
        CLEANED_SCHEMA,
        clean_batches(_counted(batches, progress), project.stages.clean),
        lambda: storage.count_rows(UNIFIED, source_name),
    )
