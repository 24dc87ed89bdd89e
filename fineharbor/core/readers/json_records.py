"""JSON array or JSONL records with images in a directory (LLaVA / ShareGPT style)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

from fineharbor.core.config import IngestParams, JsonSource, Shard
from fineharbor.core.readers.common import (
    BatchBuilder,
    ImageFetchError,
    Progress,
    RawBatch,
    list_files,
    read_local_image,
    relative_key,
)
from fineharbor.core.readers.fields import get_path

DEFAULT_IMAGE_FIELD = "image"


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """(index, record or None, error) per line; a bad line does not stop the file."""
    with path.open("rb") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                yield index, None, f"line {index + 1}: {error}"
                continue
            if not isinstance(record, dict):
                yield (
                    index,
                    None,
                    f"line {index + 1}: expected an object, got {type(record).__name__}",
                )
                continue
            yield index, record, ""


def _json_array_records(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """Streams a top-level JSON array with ijson, so a multi-GB LLaVA file needs no big buffer."""
    index = -1
    with path.open("rb") as handle:
        try:
            for index, record in enumerate(ijson.items(handle, "item", use_float=True)):
                if isinstance(record, dict):
                    yield index, record, ""
                else:
                    yield index, None, f"element {index}: expected an object"
        except ijson.JSONError as error:
            yield index + 1, None, f"element {index + 1} and after: {error}"


def _image_references(record: dict, field: str) -> list[str]:
    value = get_path(record, field)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    refs = []
    for item in values:
        if isinstance(item, str):
            refs.append(item)
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            refs.append(item["path"])
        else:
            raise ImageFetchError("malformed_record", f"image field {field!r} holds {item!r}")
    return refs


def read_json(
    source: JsonSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    root, files = list_files(source.location, (".json", ".jsonl"), shard)
    image_root = Path(source.image_root) if source.image_root else root
    image_field = source.mapping.images or DEFAULT_IMAGE_FIELD
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for path in files:
        file_key = relative_key(root, path)
        records = _jsonl_records(path) if path.suffix == ".jsonl" else _json_array_records(path)
        for index, record, error in records:
            if record is None:
                builder.reject(f"{file_key}:{index}", "malformed_record", error)
            else:
                _read_record(
                    builder,
                    record,
                    source,
                    (path, file_key, index),
                    image_root,
                    image_field,
                    params,
                )
            yield from builder.drain_if_full()
    yield from builder.drain()


def _read_record(
    builder: BatchBuilder,
    record: dict[str, Any],
    source: JsonSource,
    position: tuple[Path, str, int],
    image_root: Path,
    image_field: str,
    params: IngestParams,
) -> None:
    path, file_key, index = position
    key_value = get_path(record, source.mapping.origin_key) if source.mapping.origin_key else None
    origin_key = str(key_value) if key_value not in (None, "") else f"{file_key}:{index}"
    try:
        images = [
            read_local_image(image_root, ref, params.max_image_bytes)
            for ref in _image_references(record, image_field)
        ]
    except ImageFetchError as error:
        builder.reject(origin_key, error.reason, error.detail)
        return
    builder.keep(origin_key, record, images, origin_uri=str(path))
