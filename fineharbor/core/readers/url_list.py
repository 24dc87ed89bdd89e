"""LAION-style URL lists (Parquet, CSV, TSV, JSONL); each URL is downloaded (img2dataset-like).

A bad line never stops a list: a JSONL line that is not a JSON object (``5``, ``null``, invalid
UTF-8), a CSV row with the wrong number of fields or with invalid UTF-8 in a field, each becomes
a ``malformed_record`` reject and the reader goes on (JSONL lines are parsed by the JSON reader's
:func:`jsonl_records`: a line over ``max_record_bytes`` is ``record_too_large``, skipped unread,
one nested too deep ``record_too_deep``). A list file that is not a regular file inside the
source, or that cannot be read any further (truncated Parquet, a CSV block whose types change),
is one ``file_unreadable`` (or confinement) reject naming it, and the next file is read.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fineharbor.core.config import IngestParams, Shard, UrlListSource
from fineharbor.core.download import Downloader
from fineharbor.core.download_store import DownloadStore
from fineharbor.core.readers.common import (
    BatchBuilder,
    Progress,
    RawBatch,
    ReadStats,
    list_files,
    relative_key,
)
from fineharbor.core.readers.fields import get_path
from fineharbor.core.readers.json_records import FILE_UNREADABLE, file_problem, jsonl_records

_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl")
MALFORMED = "$malformed"
REASON = "$reason"


def _jsonl_rows(path: Path, max_record_bytes: int) -> Iterator[dict]:
    for parsed in jsonl_records(path, max_record_bytes):
        if parsed.record is None:
            yield {MALFORMED: parsed.detail, REASON: parsed.reason}
        else:
            yield parsed.record


def _decoded(row: dict, binary: list[str], number: int) -> dict:
    """A CSV row with its binary-typed fields as text (pyarrow types a column that holds
    invalid UTF-8 as binary), or a malformed marker naming the first bad field."""
    for name in binary:
        value = row[name]
        if isinstance(value, bytes):
            try:
                row[name] = value.decode()
            except UnicodeDecodeError as error:
                return {MALFORMED: f"row {number}: column {name!r} is not UTF-8 ({error.reason})"}
    return row


def _csv_rows(path: Path) -> Iterator[dict]:
    invalid: list[dict] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        invalid.append(
            {
                MALFORMED: f"row {row.number}: {row.actual_columns} fields where the header has "
                f"{row.expected_columns}: {row.text[:200]!r}"
            }
        )
        return "skip"

    parse = pacsv.ParseOptions(
        delimiter="\t" if path.suffix == ".tsv" else ",", invalid_row_handler=on_invalid_row
    )
    convert = pacsv.ConvertOptions(strings_can_be_null=False)
    # One thread: invalid rows are reported while their block is parsed, so they come out just
    # before that block's good rows, at the same place on every run.
    read = pacsv.ReadOptions(block_size=1 << 22, use_threads=False)
    reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    number = 1  # the row's number in the file, the header being row 1, as pyarrow counts
    for batch in reader:
        number += len(invalid)
        yield from invalid
        invalid.clear()
        binary = [f.name for f in batch.schema if pa.types.is_binary(f.type)]
        for row in batch.to_pylist():
            number += 1
            yield _decoded(row, binary, number) if binary else row
    yield from invalid


def _parquet_rows(path: Path, batch_size: int) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def iter_rows(
    path: Path, batch_size: int, max_record_bytes: int = IngestParams().max_record_bytes
) -> Iterator[dict]:
    """A URL list's rows as dicts; a bad line as ``{"$malformed": why}`` (with ``"$reason"``
    when it is not ``malformed_record``), and a file that cannot be read further as one last
    such row with reason ``file_unreadable``."""
    if path.suffix == ".parquet":
        rows = _parquet_rows(path, batch_size)
    elif path.suffix in (".csv", ".tsv"):
        rows = _csv_rows(path)
    else:
        rows = _jsonl_rows(path, max_record_bytes)
    count = 0
    try:
        for row in rows:
            count += 1
            yield row
    except (OSError, ValueError, pa.ArrowException) as error:
        yield {
            MALFORMED: f"{path.name}: unreadable after {count} rows: {error}"[:500],
            REASON: FILE_UNREADABLE,
        }


def read_url_list(
    source: UrlListSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
    stats: ReadStats | None = None,
    store: DownloadStore | None = None,
) -> Iterator[RawBatch]:
    """Rows of the source's URL lists with their images downloaded; with ``store``, downloads
    kept from earlier runs are reused and new ones kept (see ``core/download_store.py``)."""
    root, files = list_files(source.location, _SUFFIXES, shard)
    if stats is not None:
        stats.files_seen += len(files)
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    pending: collections.deque[tuple[str, dict, str]] = collections.deque()

    def urls() -> Iterator[str]:
        """Feeds the downloader lazily; rows wait in `pending` until their result arrives."""
        for path in files:
            file_key = relative_key(root, path)
            problem = file_problem(path, root, source.location, source.follow_symlinks)
            if problem:  # a FIFO, a device or a link out of the source: one reject, not read
                pending.append((file_key, {MALFORMED: problem[1], REASON: problem[0]}, ""))
                yield ""
                continue
            rows = iter_rows(path, source.batch_size, params.max_record_bytes)
            for index, row in enumerate(rows):
                key = (
                    get_path(row, source.mapping.origin_key)
                    if source.mapping.origin_key and MALFORMED not in row
                    else None
                )
                origin_key = str(key) if key not in (None, "") else f"{file_key}:{index}"
                url = row.get(source.url_column) if MALFORMED not in row else None
                pending.append((origin_key, row, url if isinstance(url, str) else ""))
                yield pending[-1][2]

    with Downloader(
        params.download, allow_private_addresses=source.allow_private_addresses
    ) as downloader:
        results = downloader.map(urls()) if store is None else store.fetch(downloader, urls())
        for result in results:
            origin_key, row, url = pending.popleft()
            if MALFORMED in row:
                builder.reject(origin_key, row.get(REASON, "malformed_record"), row[MALFORMED])
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
                        "fetched_at": result.fetched_at,
                    },
                }
                image = {"bytes": result.content, "path": url.rsplit("/", 1)[-1][:200]}
                builder.keep(origin_key, record, [image], origin_uri=url)
            yield from builder.drain_if_full()
    yield from builder.drain()
