"""What every reader shares: row building, batching, file listing, local image fetching."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from fineharbor.core.config import Shard
from fineharbor.core.readers.files import (
    IMAGE_MISSING,
    Entry,
    FileRefused,
    check_path,
    confined,
    read_bounded,
    walk,
)
from fineharbor.core.schema import RAW_SCHEMA, REJECT_SCHEMA, make_sample_id, reject_row

T = TypeVar("T")

RawBatch = tuple[pa.Table, pa.Table]
"""(kept raw rows with RAW_SCHEMA, rejected rows with REJECT_SCHEMA)."""

Progress = Callable[[int], None]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass
class ReadStats:
    """What a reader saw, for the raw stage's metadata: every file (or directory entry) under
    the location is a raw row, a reject, or a sidecar read into a row
    (``files_seen == rows + rejects + sidecars`` for an image folder); ``members_seen`` counts
    the members of WebDataset shards."""

    files_seen: int = 0
    sidecars: int = 0
    members_seen: int = 0

    def as_metadata(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if v or k == "files_seen"}


class SourceLocationError(FileNotFoundError):
    """The source's location is missing or holds no readable files: fails that partition only."""


def _json_default(value: Any) -> Any:
    """Binary fields are recorded by size: the record keeps that they existed, not the bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": len(value)}
    return str(value)


def encode_record(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=_json_default)


@dataclass
class BatchBuilder:
    """Accumulates kept and rejected rows of one source and emits them every `batch_size` rows."""

    source: str
    batch_size: int
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    progress: Progress | None = None
    # Column-built chunks: readers whose images are already Arrow skip Python row objects.
    kept_tables: list[pa.Table] = field(default_factory=list)
    # Origin keys must be unique within a source, or two rows would share a sample_id.
    _seen_keys: set[str] = field(default_factory=set)

    def claim(self, origin_key: str) -> bool:
        """Register a key; a repeated key is rejected here so ids stay unique."""
        if origin_key in self._seen_keys:
            self.rejected.append(
                reject_row(
                    self.source,
                    origin_key,
                    "duplicate_origin_key",
                    f"origin key {origin_key!r} appears more than once in the source",
                )
            )
            return False
        self._seen_keys.add(origin_key)
        return True

    def keep(
        self,
        origin_key: str,
        record: dict[str, Any],
        images: list[dict],
        origin_uri: str | None = None,
    ) -> None:
        if not self.claim(origin_key):
            return
        self.kept.append(
            {
                "sample_id": make_sample_id(self.source, origin_key),
                "source": self.source,
                "origin_uri": origin_uri,
                "origin_key": origin_key,
                "record": encode_record(record),
                "images": images,
            }
        )

    def keep_columns(
        self, origin_keys: list[str], records: list[str], images: pa.Array, origin_uri: str
    ) -> bool:
        """Keep a whole chunk at once; False (nothing kept) if any key repeats a seen one."""
        if len(set(origin_keys)) != len(origin_keys) or not self._seen_keys.isdisjoint(origin_keys):
            return False
        self._seen_keys.update(origin_keys)
        count = len(origin_keys)
        self.kept_tables.append(
            pa.Table.from_arrays(
                [
                    pa.array([make_sample_id(self.source, k) for k in origin_keys], pa.string()),
                    pa.array([self.source] * count, pa.string()),
                    pa.array([origin_uri] * count, pa.string()),
                    pa.array(origin_keys, pa.string()),
                    pa.array(records, pa.string()),
                    images,
                ],
                schema=RAW_SCHEMA,
            )
        )
        return True

    def reject(self, origin_key: str, reason: str, detail: str) -> None:
        if not self.claim(origin_key):
            return
        self.rejected.append(reject_row(self.source, origin_key, reason, detail))

    @property
    def pending(self) -> int:
        return len(self.kept) + len(self.rejected) + sum(t.num_rows for t in self.kept_tables)

    @property
    def full(self) -> bool:
        return self.pending >= self.batch_size

    def flush(self) -> RawBatch:
        count = self.pending
        kept = pa.concat_tables(
            [*self.kept_tables, pa.Table.from_pylist(self.kept, schema=RAW_SCHEMA)]
        )
        batch = (kept, pa.Table.from_pylist(self.rejected, schema=REJECT_SCHEMA))
        if self.progress is not None:
            self.progress(count)
        self.kept, self.rejected, self.kept_tables = [], [], []
        return batch

    def drain_if_full(self) -> Iterator[RawBatch]:
        if self.full:
            yield self.flush()

    def drain(self) -> Iterator[RawBatch]:
        if self.pending:
            yield self.flush()


def _walk(directory: str) -> list[str]:
    found = []
    for parent, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(parent, name) for name in names]
    return found


def shard_files(files: list[T], shard: Shard | None, location: str) -> list[T]:
    """The files (or groups of files) of one shard: every ``count``-th from ``index`` on. A
    shard must have files to read, so a source cannot have more shards than files."""
    if shard is None:
        return files
    if shard.count > len(files):
        raise SourceLocationError(
            f"source location {location} holds {len(files)} files: it cannot be split into "
            f"{shard.count} shards (sources shard by file; set `shards` to at most {len(files)})"
        )
    return shard.pick(files)


def list_files(
    location: str, suffixes: tuple[str, ...], shard: Shard | None = None
) -> tuple[Path, list[Path]]:
    """Files of a source location (a file, a directory searched recursively, or a glob), or of
    one shard of it.

    Returns the root that origin keys are made relative to, and the sorted files.
    """
    if any(ch in location for ch in "*?["):
        root = Path(location.split("*")[0].split("?")[0].split("[")[0])
        root = root if root.is_dir() else root.parent
        candidates = [p for p in glob.glob(location, recursive=True) if os.path.isfile(p)]
    else:
        path = Path(location)
        if not path.exists():
            raise SourceLocationError(f"source location {location} does not exist")
        if path.is_file():
            root, candidates = path.parent, [location]
        else:
            root, candidates = path, _walk(location)
    files = sorted(
        Path(f)
        for f in candidates
        if f.lower().endswith(suffixes) and not os.path.basename(f).startswith(".")
    )
    if not files:
        raise SourceLocationError(f"source location {location} holds no {'/'.join(suffixes)} files")
    return root, shard_files(files, shard, location)


def list_entries(location: str, follow_symlinks: bool) -> tuple[str, list[Entry]]:
    """The root and every entry of a location: a directory (walked), a file, or a glob."""
    if any(ch in location for ch in "*?["):
        root = location.split("*")[0].split("?")[0].split("[")[0]
        root = root if os.path.isdir(root) else os.path.dirname(root) or "."
        entries = []
        for path in sorted(glob.glob(location, recursive=True)):
            if os.path.isdir(path) and not os.path.islink(path):
                continue
            key = os.path.relpath(path, root).replace(os.sep, "/")
            entries.append(_file_entry(root, path, key, follow_symlinks))
        return root, entries
    if not os.path.lexists(location):
        raise SourceLocationError(f"source location {location} does not exist")
    if not os.path.isdir(location):
        root = os.path.dirname(location) or "."
        return root, [_file_entry(root, location, os.path.basename(location), follow_symlinks)]
    return location, walk(location, follow_symlinks=follow_symlinks)


def _file_entry(root: str, path: str, key: str, follow_symlinks: bool) -> Entry:
    try:
        return Entry(key, confined(root, path, follow_symlinks=follow_symlinks))
    except FileRefused as refusal:
        return Entry(key, None, refusal)


def relative_key(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# Callers catch this name; a refused image and a refused sidecar are the same kind of event.
ImageFetchError = FileRefused


def read_local_image(
    root: Path, reference: str, max_bytes: int, *, follow_symlinks: bool = False
) -> dict:
    """Bytes of an image a record references, confined to the source's image root.

    A record must not climb out with `..` or an absolute path (``image_path_outside_root``), nor
    through a symlink whose real path leaves the root (``path_outside_source``) unless the source
    sets ``follow_symlinks``. Only a regular file is opened, without blocking, and at most
    ``max_bytes`` are read (see :mod:`fineharbor.core.readers.files`).
    """
    check_path(reference)
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, reference))
    if not path.startswith(base + os.sep):
        raise ImageFetchError("image_path_outside_root", f"{reference!r} escapes {base}")
    if not os.path.lexists(path):
        raise ImageFetchError(IMAGE_MISSING, f"{reference!r} not found under {base}")
    real = confined(base, path, follow_symlinks=follow_symlinks)
    return {"bytes": read_bounded(real, repr(reference), max_bytes), "path": reference}
