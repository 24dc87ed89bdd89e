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
from fineharbor.core.readers.fields import get_path
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
            images.append(read_local_image(root, item, max_bytes))
        elif isinstance(item, dict) and item.get("bytes") is not None:
            images.append({"bytes": item["bytes"], "path": item.get("path")})
        elif isinstance(item, dict) and item.get("path"):
            images.append(read_local_image(root, item["path"], max_bytes))
        else:
            raise ImageFetchError("image_missing", f"image cell without bytes or path: {item!r}")
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
    declared = source.mapping.images
    for path in files:
        file_key = relative_key(root, path)
        parquet = pq.ParquetFile(path)
        columns = image_columns(parquet.schema_arrow, declared)
        row_index = 0
        for batch in parquet.iter_batches(batch_size=source.batch_size):
            if _keep_batch_columnar(builder, batch, columns, source, file_key, row_index, path):
                row_index += batch.num_rows
                yield from builder.drain_if_full()
                continue
            for row in batch.to_pylist():
                origin_key = _origin_key(row, source, file_key, row_index)
                row_index += 1
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
                except ImageFetchError as error:
                    builder.reject(origin_key, error.reason, error.detail)
                else:
                    record = {k: v for k, v in row.items() if k not in columns}
                    builder.keep(origin_key, record, images, origin_uri=str(path))
                yield from builder.drain_if_full()
    yield from builder.drain()


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
    rows = batch.drop_columns(columns).to_pylist()
    keys = [_origin_key(row, source, file_key, first_row + i) for i, row in enumerate(rows)]
    return builder.keep_columns(keys, [encode_record(r) for r in rows], images, str(path))


def _origin_key(row: dict, source: HfParquetSource, file_key: str, row_index: int) -> str:
    if source.mapping.origin_key:
        value = get_path(row, source.mapping.origin_key)
        if value is not None and value != "":
            return str(value)
    return f"{file_key}:{row_index}"
