"""LAION-style URL lists (Parquet, CSV, TSV, JSONL); each URL is downloaded (img2dataset-like)."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fineharbor.core.config import IngestParams, Shard, UrlListSource
from fineharbor.core.download import Downloader
from fineharbor.core.readers.common import (
    BatchBuilder,
    Progress,
    RawBatch,
    list_files,
    relative_key,
)
from fineharbor.core.readers.fields import get_path

_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl")


def iter_rows(path: Path, batch_size: int) -> Iterator[dict]:
    """A URL list's rows as dicts (malformed JSONL lines as {"$malformed": error})."""
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    elif path.suffix in (".csv", ".tsv"):
        parse = pacsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
        # Every column as text: a numeric-looking key column must not change its spelling.
        convert = pacsv.ConvertOptions(strings_can_be_null=False)
        read = pacsv.ReadOptions(block_size=1 << 22)
        reader = pacsv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=convert
        )
        for batch in reader:
            yield from batch.to_pylist()
    else:
        with path.open("rb") as handle:
            for index, line in enumerate(handle):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        yield {"$malformed": f"line {index + 1}: {error}"}


def read_url_list(
    source: UrlListSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    root, files = list_files(source.location, _SUFFIXES, shard)
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    pending: collections.deque[tuple[str, dict, str]] = collections.deque()

    def urls() -> Iterator[str]:
        """Feeds the downloader lazily; rows wait in `pending` until their result arrives."""
        for path in files:
            file_key = relative_key(root, path)
            for index, row in enumerate(iter_rows(path, source.batch_size)):
                key = (
                    get_path(row, source.mapping.origin_key) if source.mapping.origin_key else None
                )
                origin_key = str(key) if key not in (None, "") else f"{file_key}:{index}"
                url = row.get(source.url_column) if isinstance(row, dict) else None
                pending.append((origin_key, row, url if isinstance(url, str) else ""))
                yield pending[-1][2]

    with Downloader(
        params.download, allow_private_addresses=source.allow_private_addresses
    ) as downloader:
        for result in downloader.map(urls()):
            origin_key, row, url = pending.popleft()
            if "$malformed" in row:
                builder.reject(origin_key, "malformed_record", row["$malformed"])
            elif not url:
                builder.reject(
                    origin_key, "malformed_record", f"no URL in column {source.url_column!r}"
                )
            elif not result.ok:
                builder.reject(
                    origin_key, f"download_{result.error_code}", result.error_message or ""
                )
            else:
                record = {
                    **row,
                    "download": {
                        "http_status": result.http_status,
                        "final_url": result.final_url,
                        "attempts": result.attempts,
                    },
                }
                image = {"bytes": result.content, "path": url.rsplit("/", 1)[-1][:200]}
                builder.keep(origin_key, record, [image], origin_uri=url)
            yield from builder.drain_if_full()
    yield from builder.drain()
