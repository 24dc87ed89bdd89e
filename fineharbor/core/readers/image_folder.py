"""A directory of images with sidecar captions: `a.jpg` + `a.txt` and/or `a.json`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fineharbor.core.config import ImageFolderSource, IngestParams
from fineharbor.core.readers.common import (
    IMAGE_SUFFIXES,
    BatchBuilder,
    ImageFetchError,
    Progress,
    RawBatch,
    list_files,
    read_local_image,
    relative_key,
)


def _sidecar(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def read_image_folder(
    source: ImageFolderSource, params: IngestParams, progress: Progress | None = None
) -> Iterator[RawBatch]:
    root, files = list_files(source.location, IMAGE_SUFFIXES)
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for path in files:
        origin_key = relative_key(root, path)
        record: dict = {"file": origin_key}
        try:
            text = _sidecar(path.with_suffix(".txt"))
            if text is not None:
                record["txt"] = text
            sidecar = _sidecar(path.with_suffix(".json"))
            if sidecar is not None:
                record["json"] = json.loads(sidecar)
            image = read_local_image(root, origin_key, params.max_image_bytes)
        except ImageFetchError as error:
            builder.reject(origin_key, error.reason, error.detail)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            builder.reject(origin_key, "malformed_record", f"sidecar: {error}")
        else:
            builder.keep(origin_key, record, [image], origin_uri=str(path))
        yield from builder.drain_if_full()
    yield from builder.drain()
