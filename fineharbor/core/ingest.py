"""The ingest stages: read a source as it is (``raw_samples``), then map its records into the
unified schema (``unified_samples``)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pyarrow as pa

from fineharbor.core.config import InterleavedSource, MappingSpec, ProjectConfig, UrlListSource
from fineharbor.core.distributed.engine import BatchWork, StreamFn, map_partition
from fineharbor.core.download_store import (
    ACCEPT_LOSSES_ENV,
    DOWNLOADS,
    DownloadLossError,
    DownloadStore,
    LossCounter,
    ReusePolicy,
)
from fineharbor.core.mapping import map_batch
from fineharbor.core.pipeline import RAW, UNIFIED
from fineharbor.core.readers import ReadStats, read_source, reports_stats
from fineharbor.core.readers.interleaved import read_interleaved
from fineharbor.core.readers.url_list import read_url_list
from fineharbor.core.schema import RAW_SCHEMA, UNIFIED_SCHEMA
from fineharbor.core.stage_io import Progress, StageReport, write_mapped, write_stage
from fineharbor.core.storage import Storage
from fineharbor.core.stored import by_reference


def build_raw_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Read a source as it is, fetching its images: the first, per-source stage.

    URL lists and interleaved documents reuse the downloads kept from earlier runs, and a run
    that would replace published rows with download failures is not published
    (:func:`_guard_downloads`)."""
    source = project.source(source_name)
    shard = project.shard(source_name)
    seen = 0
    stats = ReadStats()
    store = None
    params = project.stages.ingest
    if isinstance(source, UrlListSource):
        store = DownloadStore(storage, source.name, ReusePolicy.for_source(source), params.download)
        batches = read_url_list(source, params, progress, shard, stats, store)
    elif isinstance(source, InterleavedSource):
        store = DownloadStore(storage, source.name, ReusePolicy.for_source(source), params.download)
        batches = read_interleaved(source, params, progress, shard, store)
    else:
        batches = read_source(source, params, progress, shard, stats)

    def seen_and_guarded() -> Iterable[tuple[pa.Table, pa.Table]]:
        nonlocal seen
        losses = LossCounter()
        for kept, rejected in batches:
            seen += kept.num_rows + rejected.num_rows
            if store is not None:
                losses.add(rejected)
            yield kept, rejected
        if store is not None:
            _guard_downloads(storage, source_name, losses)

    report = write_stage(storage, RAW, source_name, RAW_SCHEMA, seen_and_guarded(), lambda: seen)
    if store is not None:
        report.extra.update(store.stats.as_metadata())
    if reports_stats(source.reader):  # files seen = rows + rejects + sidecars read into rows
        report.extra.update(stats.as_metadata())
    return report


def _guard_downloads(storage: Storage, partition: str, losses: LossCounter) -> None:
    """Refuse to publish when rows of the published partition would become download failures
    ("not now" ones: DNS, connection, timeout, HTTP errors); the published output stays."""
    if not storage.has_partition(RAW, partition) or os.environ.get(ACCEPT_LOSSES_ENV) == "1":
        return
    published = storage.iter_batches(RAW, partition, columns=["sample_id"], batch_size=8192)
    lost = losses.lost(published)
    if not lost:
        return
    reasons = ", ".join(f"{reason} {count}" for reason, count in lost.most_common())
    raise DownloadLossError(
        f"{RAW} {partition}: not published: {lost.total()} URL(s) whose images the published "
        f"partition holds now fail to download ({reasons}); the published output "
        f"({storage.count_rows(RAW, partition)} rows) stays in place. Their kept copies are "
        f"missing from {DOWNLOADS}/ under the storage root: retry when the servers answer, or "
        f"set {ACCEPT_LOSSES_ENV}=1 to publish without them."
    )


def _map_records(mapping: MappingSpec) -> StreamFn:
    """Mapping keeps raw's images as they are: written by reference (core/stored.py)."""
    return by_reference(lambda batches: (map_batch(batch, mapping) for batch in batches))


def build_unified_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Map raw records into the unified schema with the source's declared mapping."""
    source = project.source(source_name)
    work = BatchWork(UNIFIED, _map_records, (source.mapping,))
    mapped = map_partition(
        project.execution,
        storage,
        RAW,
        source_name,
        work,
        batch_size=source.batch_size,
        progress=progress,
    )
    return write_mapped(
        storage,
        UNIFIED,
        source_name,
        UNIFIED_SCHEMA,
        mapped,
        lambda: storage.count_rows(RAW, source_name),
    )
