"""`datasets.load_dataset` by name or builder, streamed; images kept undecoded."""

from __future__ import annotations

from collections.abc import Iterator

from fineharbor.core.config import HfDatasetSource, IngestParams, Shard
from fineharbor.core.readers.common import (
    BatchBuilder,
    Progress,
    RawBatch,
    SourceLocationError,
    encode_record,
)
from fineharbor.core.readers.fields import get_path


def _image_columns(features) -> list[str]:
    import datasets

    columns = []
    for name, feature in (features or {}).items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, datasets.Image) or isinstance(inner, datasets.Image):
            columns.append(name)
    return columns


def read_hf_dataset(
    source: HfDatasetSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    import datasets

    try:
        dataset = datasets.load_dataset(
            source.location,
            source.subset,
            data_files=source.data_files,
            split=source.split,
            streaming=True,
        )
    except Exception as error:
        # `datasets` infers the columns from the first file before streaming anything: a bad
        # first file fails the source here, with one line instead of a traceback.
        raise SourceLocationError(
            f"datasets.load_dataset({source.location!r}, {source.subset!r}, "
            f"split={source.split!r}) failed: {type(error).__name__}: {str(error)[:300]}"
        ) from None
    if shard is not None:
        if shard.count > dataset.num_shards:
            raise SourceLocationError(
                f"{source.location!r} streams from {dataset.num_shards} files: it cannot be split "
                f"into {shard.count} shards (set `shards` to at most {dataset.num_shards})"
            )
        dataset = dataset.shard(num_shards=shard.count, index=shard.index)
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    index = 0
    # File by file: `datasets` raises out of the iterator on a bad file (a truncated Parquet,
    # a JSON line nested too deep), which would end the stream; then only that file is lost.
    for number in range(dataset.num_shards):
        part = dataset.shard(num_shards=dataset.num_shards, index=number)
        where = _files_of(part) or f"file {number + 1} of {dataset.num_shards}"
        # datasets wraps a bad file's error in many types: any of them costs this file only
        try:
            part, columns = _undecoded(part)  # reads the file's first row when types are unknown
            rows = iter(part)
        except Exception as error:
            _reject_file(builder, source, number, f"{where}: not read", error)
            continue
        while True:
            try:
                row = next(rows, None)
            except Exception as error:
                _reject_file(builder, source, number, f"{where}: rows from {index} on", error)
                break
            if row is None:
                break
            _keep(builder, row, index, columns, source)
            index += 1
            yield from builder.drain_if_full()
    yield from builder.drain()


def _reject_file(
    builder: BatchBuilder, source: HfDatasetSource, number: int, lost: str, error: Exception
) -> None:
    detail = f"{lost} not read: {type(error).__name__}: {str(error)[:300]}"
    builder.reject(f"{source.split}:file{number}", "file_unreadable", detail)


def _undecoded(dataset):
    """The dataset with its image columns left as {bytes, path}, and those columns."""
    import datasets

    if dataset.features is None:
        dataset = dataset._resolve_features()
    columns = _image_columns(dataset.features)
    for column in columns:
        feature = dataset.features[column]
        undecoded = datasets.Image(decode=False)
        dataset = dataset.cast_column(
            column, undecoded if isinstance(feature, datasets.Image) else datasets.List(undecoded)
        )
    return dataset, columns


def _files_of(part) -> str:
    """The files one shard of a stream reads, where `datasets` says (names the bad file)."""
    kwargs = getattr(getattr(part, "_ex_iterable", None), "kwargs", None) or {}
    files = kwargs.get("original_files") or kwargs.get("files") or []
    return ", ".join(str(f) for f in files if isinstance(f, str))


def _keep(
    builder: BatchBuilder, row: dict, index: int, columns: list[str], source: HfDatasetSource
) -> None:
    key = get_path(row, source.mapping.origin_key) if source.mapping.origin_key else None
    origin_key = str(key) if key not in (None, "") else f"{source.split}:{index}"
    images = []
    for column in columns:
        value = row.get(column)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item.get("bytes") is not None:
                images.append({"bytes": item["bytes"], "path": item.get("path")})
    record = {k: v for k, v in row.items() if k not in columns}
    try:
        encode_record(record).encode("utf-8")
    except RecursionError:
        builder.reject(origin_key, "record_too_deep", "nested deeper than the JSON encoder's limit")
    except UnicodeEncodeError as error:
        builder.reject(origin_key, "malformed_record", f"a string is not Unicode: {error}")
    else:
        builder.keep(origin_key, record, images, origin_uri=f"hf://{source.location}")
