"""A directory of images, with or without sidecar captions (`a.jpg` + `a.txt` and/or `a.json`).

Every entry under the location is accounted for: an image (identified by content, whatever its
suffix) is a raw row, carrying the sidecars that share its stem; everything else is a reject
with a reason (``unsupported_file`` names the extension and the sniffed content). A folder of
images without any sidecar is a normal, image-only source. Files are opened under the rules of
:mod:`fineharbor.core.readers.files` (confined, regular files only, bounded reads).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from itertools import groupby

from fineharbor.core.config import ImageFolderSource, IngestParams, Shard
from fineharbor.core.readers.common import (
    BatchBuilder,
    Progress,
    RawBatch,
    ReadStats,
    SourceLocationError,
    list_entries,
    shard_files,
)
from fineharbor.core.readers.files import (
    HEAD_BYTES,
    IMAGE_FILE_TOO_LARGE,
    UNSUPPORTED_FILE,
    Entry,
    FileRefused,
    Identified,
    RegularFile,
    damaged_image,
    describe,
    identify,
    read_text,
)

# Sidecars pair with the files of the same stem; alone, they are files like any other.
SIDECARS = {".txt": "txt", ".json": "json"}


def _stem(entry: Entry) -> str:
    directory, _, name = entry.key.rpartition("/")
    stem = os.path.splitext(name)[0] or name
    return f"{directory}/{stem}" if directory else stem


def _sidecar_suffix(entry: Entry) -> str | None:
    suffix = os.path.splitext(entry.name)[1].lower()
    return suffix if suffix in SIDECARS else None


def _read_image(entry: Entry, max_bytes: int) -> tuple[bytes | None, Identified]:
    """(bytes, what they are) of a candidate file; non-images are identified from their head
    and not read further. Raises FileRefused (too large, not a regular file...)."""
    assert entry.real is not None
    with RegularFile(entry.real, entry.key) as handle:
        head = handle.read(HEAD_BYTES - 1)
        identified = identify(head)
        if not identified.image and identified.kind not in ("text", "unknown"):
            return None, identified  # a known non-image container: never read further
        if handle.size > max_bytes:
            what = f"{entry.key} ({identified.kind})"
            if identified.image:
                detail = f"{what}: {handle.size} bytes > {max_bytes}"
                raise FileRefused(IMAGE_FILE_TOO_LARGE, detail)
            raise FileRefused(UNSUPPORTED_FILE, f"{describe(entry.key, identified)}, too large")
        payload = head + handle.read(max_bytes - len(head))
    if len(payload) > max_bytes:
        raise FileRefused(IMAGE_FILE_TOO_LARGE, f"{entry.key}: over {max_bytes} bytes")
    # formats without magic bytes (TGA, PCX...) need more than the head to be recognised
    return payload, identified if identified.image else identify(payload)


def _sidecar_record(sidecars: list[Entry], max_record_bytes: int) -> dict:
    record: dict = {}
    for entry in sidecars:
        if entry.refused is not None:
            raise FileRefused(entry.refused.reason, f"sidecar {entry.refused.detail}")
        assert entry.real is not None
        text = read_text(entry.real, f"sidecar {entry.key}", max_record_bytes)
        field = SIDECARS[os.path.splitext(entry.name)[1].lower()]
        if field == "json":
            try:
                record["json"] = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as error:
                raise FileRefused("malformed_record", f"sidecar {entry.key}: {error}") from None
        else:
            record[field] = text
    return record


def read_image_folder(
    source: ImageFolderSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
    stats: ReadStats | None = None,
) -> Iterator[RawBatch]:
    root, entries = list_entries(source.location, source.follow_symlinks)
    if not entries:
        raise SourceLocationError(f"source location {source.location} holds no files")
    # an image and its sidecars stay together in one shard
    groups = [list(group) for _, group in groupby(sorted(entries, key=_stem), key=_stem)]
    groups = shard_files(groups, shard, source.location)
    stats = stats if stats is not None else ReadStats()
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for group in groups:
        stats.files_seen += len(group)
        _read_group(builder, stats, group, root, source, params)
        yield from builder.drain_if_full()
    yield from builder.drain()


def _read_group(
    builder: BatchBuilder,
    stats: ReadStats,
    group: list[Entry],
    root: str,
    source: ImageFolderSource,
    params: IngestParams,
) -> None:
    """One stem's files: each image a row with the shared sidecars, the rest rejects."""
    sidecars = [e for e in group if _sidecar_suffix(e)]
    primaries = [e for e in group if not _sidecar_suffix(e)]
    if not primaries:  # a lone `a.txt` may be an image under any name: judged by content
        primaries, sidecars = sidecars, []
    images = []
    for entry in primaries:
        if entry.refused is not None:
            builder.reject(entry.key, entry.refused.reason, entry.refused.detail)
            continue
        try:
            payload, identified = _read_image(entry, params.max_image_bytes)
        except FileRefused as refusal:
            builder.reject(entry.key, refusal.reason, refusal.detail)
            continue
        if payload is not None and (identified.image or damaged_image(entry.name, identified)):
            images.append((entry, payload))
        else:
            builder.reject(entry.key, UNSUPPORTED_FILE, describe(entry.key, identified))
    if not images:
        for entry in sidecars:
            detail = f"{entry.key}: a sidecar without an image (no image shares its stem)"
            builder.reject(entry.key, UNSUPPORTED_FILE, detail)
        return
    try:
        record = _sidecar_record(sidecars, params.max_record_bytes)
    except FileRefused as refusal:
        for entry, _ in images:
            builder.reject(entry.key, refusal.reason, refusal.detail)
        stats.sidecars += len(sidecars)
        return
    stats.sidecars += len(sidecars)
    for entry, payload in images:
        origin = os.path.join(root, entry.key)
        image = {"bytes": payload, "path": entry.key}
        builder.keep(entry.key, {"file": entry.key, **record}, [image], origin_uri=origin)
