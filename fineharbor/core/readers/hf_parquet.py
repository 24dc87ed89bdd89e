"""Hugging Face `datasets` Parquet layout: image columns are {bytes, path} structs or lists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fineharbor.core.config import HfParquetSource, IngestParams, Shard
from fineharbor.core.readers.common import (
    BatchBuilder,
    ImageFetchError,
    Progress,
    RawBatch,
    encode_record,
    list_files,
    read_local_image,
    relative_key,
)
from fineharbor.core.readers.fields import checked_reference, get_path
from fineharbor.core.readers.json_records import FILE_UNREADABLE, file_problem
from fineharbor.core.schema import IMAGE_TYPE


def _is_image_struct(dtype: pa.DataType) -> bool:
    return pa.types.is_struct(dtype) and dtype.get_field_index("bytes") >= 0


def image_columns(schema: pa.Schema, declared: str | None) -> list[str]:
    """Columns holding images: the one the mapping names, else every {bytes, path} column."""
    if declared:
        top = declared.split(".")[0]
        if top not in schema.names:
            return []
        return [top]
    found = []
    for f in schema:
        dtype = f.type
        if _is_image_struct(dtype) or (
            pa.types.is_list(dtype) and _is_image_struct(dtype.value_type)
        ):
            found.append(f.name)
    return found


def images_from_value(value, root: Path, max_bytes: int) -> list[dict]:
    """Normalise an image cell (struct, list of structs, path string, or null) to {bytes, path}s."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    images = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            images.append(read_local_image(root, checked_reference(item), max_bytes))
        elif isinstance(item, dict) and item.get("bytes") is not None:
            images.append({"bytes": item["bytes"], "path": item.get("path")})
        elif isinstance(item, dict) and isinstance(item.get("path"), str) and item["path"]:
            images.append(read_local_image(root, checked_reference(item["path"]), max_bytes))
        else:
            detail = f"image cell without bytes or path: {ascii(item)[:200]}"
            raise ImageFetchError("image_missing", detail)
    return images


def embedded_images(batch: pa.RecordBatch, columns: list[str]) -> pa.Array | None:
    """The batch's images as list<IMAGE_TYPE> built in Arrow, without Python objects.

    None when that is not possible (several image columns, or images stored by path only, which
    must be fetched): the caller then takes the row-by-row path.
    """
    if len(columns) != 1:
        return None
    column = batch.column(columns[0])
    if _is_image_struct(column.type):
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        offsets = pa.array(np.concatenate([[0], np.cumsum(valid)]), pa.int32())
        lists = pa.ListArray.from_arrays(offsets, column.filter(pa.array(valid)))
    elif pa.types.is_list(column.type) and _is_image_struct(column.type.value_type):
        lists = column
    else:
        return None
    values = lists.flatten()
    data = values.field("bytes")
    if data.null_count or lists.null_count:
        return None
    path_index = values.type.get_field_index("path")
    paths = values.field(path_index) if path_index >= 0 else pa.nulls(len(values), pa.string())
    images = pa.StructArray.from_arrays(
        [data.cast(pa.binary()), paths.cast(pa.string())], fields=list(IMAGE_TYPE)
    )
    start = lists.offsets[0].as_py()
    offsets = pc.subtract(lists.offsets, pa.scalar(start, lists.offsets.type))
    return pa.ListArray.from_arrays(offsets.cast(pa.int32()), images)


def read_hf_parquet(
    source: HfParquetSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    root, files = list_files(source.location, (".parquet",), shard)
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for path in files:
        yield from _read_file(builder, path, root, source, params)
    yield from builder.drain()


def _read_file(
    builder: BatchBuilder,
    path: Path,
    root: Path,
    source: HfParquetSource,
    params: IngestParams,
) -> Iterator[RawBatch]:
    """One file's rows; a file that is not Parquet, or breaks part way (truncated, a corrupt
    page), is one reject naming it and the rows not read, and the other files are read."""
    file_key = relative_key(root, path)
    declared = source.mapping.images
    problem = file_problem(path, root, source.location, source.follow_symlinks)
    if problem:
        builder.reject(file_key, *problem)
        return
    try:
        parquet = pq.ParquetFile(path)
        columns = image_columns(parquet.schema_arrow, declared)
        batches = parquet.iter_batches(batch_size=source.batch_size)
    except (pa.ArrowException, OSError) as error:
        builder.reject(file_key, FILE_UNREADABLE, f"{path}: not a readable Parquet file: {error}")
        return
    row_index = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as error:
            total = parquet.metadata.num_rows
            builder.reject(
                file_key,
                FILE_UNREADABLE,
                f"{path}: rows {row_index} to {total - 1} of {total} not read: {error}",
            )
            return
        if batch is None:
            return
        if _keep_batch_columnar(builder, batch, columns, source, file_key, row_index, path):
            row_index += batch.num_rows
            yield from builder.drain_if_full()
            continue
        for row in _rows(batch):
            if isinstance(row, UnicodeDecodeError):
                detail = f"{path}: row {row_index}: a string cell is not UTF-8: {row}"
                builder.reject(f"{file_key}:{row_index}", "malformed_record", detail)
            else:
                origin_key = _origin_key(row, source, file_key, row_index)
                _keep_row(builder, row, origin_key, columns, root, path, declared, params)
            row_index += 1
            yield from builder.drain_if_full()


def _rows(batch: pa.RecordBatch) -> list[dict | UnicodeDecodeError]:
    """The batch's rows as dicts; Arrow does not check strings on read, so a cell that is not
    UTF-8 fails the conversion, and then only its row is replaced by the error."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    rows: list[dict | UnicodeDecodeError] = []
    for offset in range(batch.num_rows):
        try:
            rows.append(batch.slice(offset, 1).to_pylist()[0])
        except UnicodeDecodeError as error:
            rows.append(error)
    return rows


def _keep_row(
    builder: BatchBuilder,
    row: dict,
    origin_key: str,
    columns: list[str],
    root: Path,
    path: Path,
    declared: str | None,
    params: IngestParams,
) -> None:
    try:
        images = [
            image
            for column in columns
            for image in images_from_value(
                get_path(row, declared) if declared else row.get(column),
                root,
                params.max_image_bytes,
            )
        ]
        record = {k: v for k, v in row.items() if k not in columns}
        encode_record(record)  # a row nested too deep to store is refused here, not in keep
    except ImageFetchError as error:
        builder.reject(origin_key, error.reason, error.detail)
    except RecursionError:
        builder.reject(origin_key, "record_too_deep", "nested deeper than the JSON encoder's limit")
    else:
        builder.keep(origin_key, record, images, origin_uri=str(path))


def _keep_batch_columnar(
    builder: BatchBuilder,
    batch: pa.RecordBatch,
    columns: list[str],
    source: HfParquetSource,
    file_key: str,
    first_row: int,
    path: Path,
) -> bool:
    declared = source.mapping.images
    if declared and "." in declared:
        return False
    images = embedded_images(batch, columns)
    if images is None:
        return False
    try:
        rows = batch.drop_columns(columns).to_pylist()
        records = [encode_record(r) for r in rows]
    except (UnicodeDecodeError, RecursionError):
        return False  # the row-by-row path rejects the bad rows alone
    keys = [_origin_key(row, source, file_key, first_row + i) for i, row in enumerate(rows)]
    return builder.keep_columns(keys, records, images, str(path))


def _origin_key(row: dict, source: HfParquetSource, file_key: str, row_index: int) -> str:
    if source.mapping.origin_key:
        value = get_path(row, source.mapping.origin_key)
        if value is not None and value != "":
            return str(value)
    return f"{file_key}:{row_index}"
