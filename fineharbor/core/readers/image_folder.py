"""A directory of images with sidecar captions: `a.jpg` + `a.txt` and/or `a.json`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fineharbor.core.config import ImageFolderSource, IngestParams, Shard
from fineharbor.core.readers.common import (
    IMAGE_SUFFIXES,
    BatchBuilder,
    ImageFetchError,
    Progress,
    RawBatch,
    SourceLocationError,
    list_files,
    read_local_image,
    relative_key,
    shard_files,
)


def _sidecar(path: Path, present: set[Path]) -> str | None:
    # Looked up in the directory listing: a failed open per image costs more than the read.
    return path.read_text(encoding="utf-8") if path in present else None


def read_image_folder(
    source: ImageFolderSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    root, listed = list_files(source.location, (*IMAGE_SUFFIXES, ".txt", ".json"))
    present = set(listed)
    files = [f for f in listed if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise SourceLocationError(f"source location {source.location} holds no image files")
    files = shard_files(files, shard, source.location)  # an image and its sidecars stay together
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for path in files:
        origin_key = relative_key(root, path)
        record: dict = {"file": origin_key}
        try:
            text = _sidecar(path.with_suffix(".txt"), present)
            if text is not None:
                record["txt"] = text
            sidecar = _sidecar(path.with_suffix(".json"), present)
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
