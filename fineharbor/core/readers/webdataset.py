"""WebDataset tar shards: consecutive members sharing a key form one sample."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from fineharbor.core.config import IngestParams, Shard, WebDatasetSource
from fineharbor.core.readers.common import (
    IMAGE_SUFFIXES,
    BatchBuilder,
    Progress,
    RawBatch,
    list_files,
    relative_key,
)

_TEXT_EXTENSIONS = ("txt", "caption", "text")


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is everything before the first dot of the basename."""
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, extension.lower()


def _members(path: Path, max_bytes: int) -> Iterator[tuple[str, str, bytes | None, str]]:
    """(key, extension, payload or None, error) in archive order, streaming."""
    # Plain tars are read with random access ("r:"), several times faster than the stream
    # reader; compressed ones must stream.
    mode = "r:" if path.suffix == ".tar" else "r|*"
    with tarfile.open(path, mode=mode) as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, extension = split_member_name(member.name)
            if key.startswith("__") or not extension:
                continue
            if member.size > max_bytes:
                yield key, extension, None, f"{member.name}: {member.size} bytes > {max_bytes}"
                continue
            handle = archive.extractfile(member)
            yield key, extension, handle.read() if handle else None, ""


def _sample_from_members(members: dict[str, bytes]) -> tuple[dict, list[dict]]:
    record: dict = {}
    images = []
    for extension in sorted(members):
        payload = members[extension]
        if f".{extension.split('.')[-1]}" in IMAGE_SUFFIXES:
            images.append({"bytes": payload, "path": extension})
        elif extension == "json":
            record["json"] = json.loads(payload)
        elif extension in _TEXT_EXTENSIONS or extension.endswith(_TEXT_EXTENSIONS):
            record[extension] = payload.decode("utf-8")
        else:
            record[extension] = {"$bytes": len(payload)}
    return record, images


def read_webdataset(
    source: WebDatasetSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    root, shards = list_files(source.location, (".tar", ".tar.gz", ".tgz"), shard)
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for shard in shards:
        shard_key = relative_key(root, shard)
        try:
            yield from _read_shard(builder, shard, shard_key, params)
        except (tarfile.TarError, OSError, EOFError) as error:
            # A damaged shard keeps what was read before the damage and records the rest.
            builder.reject(f"{shard_key}/*", "unreadable_shard", f"{type(error).__name__}: {error}")
        yield from builder.drain_if_full()
    yield from builder.drain()


def _read_shard(
    builder: BatchBuilder, shard: Path, shard_key: str, params: IngestParams
) -> Iterator[RawBatch]:
    current_key: str | None = None
    members: dict[str, bytes] = {}
    errors: list[str] = []

    def emit() -> None:
        origin_key = f"{shard_key}/{current_key}"
        if errors:
            builder.reject(origin_key, "image_file_too_large", "; ".join(errors))
            return
        try:
            record, images = _sample_from_members(members)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            builder.reject(origin_key, "malformed_record", f"{type(error).__name__}: {error}")
            return
        builder.keep(origin_key, record, images, origin_uri=f"{shard}#{current_key}")

    for key, extension, payload, error in _members(shard, params.max_image_bytes):
        if key != current_key:
            if current_key is not None:
                emit()
                yield from builder.drain_if_full()
            current_key, members, errors = key, {}, []
        if error:
            errors.append(error)
        else:
            members[extension] = payload or b""
    if current_key is not None:
        emit()
