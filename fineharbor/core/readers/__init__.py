"""Readers turn a configured source into streamed batches of raw rows and rejects."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

from fineharbor.core.config import IngestParams, Shard, SourceConfig, source_fingerprint
from fineharbor.core.readers.common import Progress, RawBatch, ReadStats, SourceLocationError
from fineharbor.core.readers.hf_dataset import read_hf_dataset
from fineharbor.core.readers.hf_parquet import read_hf_parquet
from fineharbor.core.readers.image_folder import read_image_folder
from fineharbor.core.readers.interleaved import read_interleaved
from fineharbor.core.readers.json_records import read_json
from fineharbor.core.readers.url_list import read_url_list
from fineharbor.core.readers.webdataset import read_webdataset

READERS: dict[str, Callable[..., Iterator[RawBatch]]] = {
    "hf_parquet": read_hf_parquet,
    "json": read_json,
    "webdataset": read_webdataset,
    "url_list": read_url_list,
    "image_folder": read_image_folder,
    "hf_dataset": read_hf_dataset,
    "interleaved": read_interleaved,
}


def read_source(
    source: SourceConfig,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
    stats: ReadStats | None = None,
) -> Iterator[RawBatch]:
    """Stream a source, or one shard of it, as (raw rows, rejected rows) batches of about
    `source.batch_size`. Readers that take a `stats` argument count into `stats` what they saw
    (files, members); the others leave it untouched."""
    reader = READERS[source.reader]
    if stats is not None and reports_stats(source.reader):
        return reader(source, params, progress, shard, stats=stats)
    return reader(source, params, progress, shard)


def reports_stats(reader: str) -> bool:
    return "stats" in inspect.signature(READERS[reader]).parameters


__all__ = [
    "READERS",
    "RawBatch",
    "ReadStats",
    "SourceLocationError",
    "location_signature",
    "read_source",
    "source_state",
]


def location_signature(source: SourceConfig) -> str:
    """Cheap summary of a local location's files (count, bytes, newest mtime).

    New or changed files in a landing folder change it, so the sensor re-ingests the source.
    Remote locations (Hub names, URLs) have none: only their config fingerprint counts.
    """
    path = Path(source.location.split("*")[0])
    if "://" in source.location or not path.exists():
        return "-"
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [f.stat() for f in files]
    newest = max((s.st_mtime_ns for s in stats), default=0)
    return f"{len(stats)}:{sum(s.st_size for s in stats)}:{newest}"


def source_state(source: SourceConfig) -> str:
    return f"{source_fingerprint(source)}|{location_signature(source)}"
