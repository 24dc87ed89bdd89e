"""What every reader shares: row building, batching, file listing, local image fetching."""

from __future__ import annotations

import base64
import glob
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from fineharbor.core.schema import RAW_SCHEMA, REJECT_SCHEMA, make_sample_id, reject_row

RawBatch = tuple[pa.Table, pa.Table]
"""(kept raw rows with RAW_SCHEMA, rejected rows with REJECT_SCHEMA)."""

Progress = Callable[[int], None]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class SourceLocationError(FileNotFoundError):
    """The source's location is missing or holds no readable files: fails that partition only."""


def jsonable(value: Any) -> Any:
    """Make a record JSON-serialisable without losing that binary fields existed."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": len(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def encode_record(record: dict[str, Any]) -> str:
    return json.dumps(jsonable(record), ensure_ascii=False, sort_keys=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class BatchBuilder:
    """Accumulates kept and rejected rows of one source and emits them every `batch_size` rows."""

    source: str
    batch_size: int
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    progress: Progress | None = None
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

    def reject(self, origin_key: str, reason: str, detail: str) -> None:
        if not self.claim(origin_key):
            return
        self.rejected.append(reject_row(self.source, origin_key, reason, detail))

    @property
    def full(self) -> bool:
        return len(self.kept) + len(self.rejected) >= self.batch_size

    def flush(self) -> RawBatch:
        batch = (
            pa.Table.from_pylist(self.kept, schema=RAW_SCHEMA),
            pa.Table.from_pylist(self.rejected, schema=REJECT_SCHEMA),
        )
        if self.progress is not None:
            self.progress(len(self.kept) + len(self.rejected))
        self.kept, self.rejected = [], []
        return batch

    def drain_if_full(self) -> Iterator[RawBatch]:
        if self.full:
            yield self.flush()

    def drain(self) -> Iterator[RawBatch]:
        if self.kept or self.rejected:
            yield self.flush()


def list_files(location: str, suffixes: tuple[str, ...]) -> tuple[Path, list[Path]]:
    """Files of a source location (a file, a directory searched recursively, or a glob).

    Returns the root that origin keys are made relative to, and the sorted files.
    """
    if any(ch in location for ch in "*?["):
        root = Path(location.split("*")[0].split("?")[0].split("[")[0])
        root = root if root.is_dir() else root.parent
        files = sorted(Path(p) for p in glob.glob(location, recursive=True) if Path(p).is_file())
    else:
        path = Path(location)
        if not path.exists():
            raise SourceLocationError(f"source location {location} does not exist")
        if path.is_file():
            root, files = path.parent, [path]
        else:
            root = path
            files = sorted(p for p in path.rglob("*") if p.is_file())
    files = [f for f in files if f.name.lower().endswith(suffixes) and not f.name.startswith(".")]
    if not files:
        raise SourceLocationError(f"source location {location} holds no {'/'.join(suffixes)} files")
    return root, files


def relative_key(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


class ImageFetchError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_local_image(root: Path, reference: str, max_bytes: int) -> dict:
    """Bytes of an image referenced by a record, confined to the source's image root."""
    base = root.resolve()
    path = (base / reference).resolve()
    if not path.is_relative_to(base):
        raise ImageFetchError("image_path_outside_root", f"{reference!r} escapes {base}")
    if not path.is_file():
        raise ImageFetchError("image_missing", f"{reference!r} not found under {base}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageFetchError("image_file_too_large", f"{size} bytes > {max_bytes}")
    return {"bytes": path.read_bytes(), "path": reference}
