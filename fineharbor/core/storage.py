"""The one place that knows where data lives.

Layout under the root (``FINEHARBOR_HOME``)::

    data/<asset>/source=<partition>/part-NNNNN.parquet     per-source stages (Hive style)
    data/<asset>/part-NNNNN.parquet                        global stages
    rejects/<asset>/source=<partition>/part-NNNNN.parquet  what a stage dropped, with a reason

    _staging/<write-id>/...                                a write in progress (or a dead one's)
    _staging/<write-id>.lock                               held (flock) while its writer lives

Every path goes through :class:`Storage`, built on ``pyarrow.fs`` so the same code serves a local
directory and an object store (``s3://bucket/prefix``; endpoint and credentials from the standard
``AWS_*`` environment variables). Partitions are written to a staging directory and published
only when complete, so a killed run leaves the previous good output or nothing:

- local: the staged directory is renamed into place (``rename`` is atomic). The output it
  replaces is first renamed into the write's own staging directory, never next to the
  partition: whatever a killed run leaves lies under ``_staging/``, which no ``data/`` or
  ``rejects/`` glob matches, and :meth:`Storage.clean_staging` removes it at the next run start;
- object store: there is no rename of a directory (pyarrow's S3 ``move`` copies single objects
  only), so a partition counts as published only while its commit marker
  (``_committed.json``, listing its files) exists. Publishing deletes the old marker, replaces
  the objects with server-side copies of the staged ones, then writes the new marker last (one
  PUT, atomic). Readers going through :class:`Storage` (every stage) see the old complete
  partition, then none, then the new complete one, never a partial one; a killed publish
  leaves no marker, so nothing. File names stay ``part-NNNNN.parquet``, so glob readers
  (DuckDB, polars) work unchanged, but they do not read the marker and can see a partition
  mid-publish.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fineharbor.core.schema import REJECT_SCHEMA

PARTITION_COLUMN = "source"
DATA = "data"
REJECTS = "rejects"
_STAGING = "_staging"
_LOCK_SUFFIX = ".lock"
COMMIT_MARKER = "_committed.json"
# Object stores have no locks: a staged write is a dead run's once its newest object is this old.
# Part files are uploaded as they fill (256 MB at most), so a live writer that uploaded nothing
# for a day is not a realistic case, and one that uploaded nothing yet has nothing to delete.
STALE_STAGING_S = 24 * 3600

# Rolling to a new part file bounds both file size and the writer's buffered row group.
DEFAULT_TARGET_FILE_BYTES = 256 * 1024 * 1024
DEFAULT_ROW_GROUP_ROWS = 512


def _partition_segment(partition: str | None) -> str | None:
    return None if partition is None else f"{PARTITION_COLUMN}={partition}"


@dataclass
class Storage:
    """Parquet partitions of stage outputs and their rejects under one root (path or URI)."""

    root: str
    fs: pafs.FileSystem = field(init=False, repr=False)
    base: str = field(init=False)

    def __post_init__(self) -> None:
        if "://" in self.root:
            self.fs, self.base = pafs.FileSystem.from_uri(self.root)
        else:
            self.fs = pafs.LocalFileSystem()
            self.base = str(Path(self.root).expanduser().resolve())

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def scheme(self) -> str:
        """``file`` for a local root, else the URI's scheme (``s3``)."""
        return "file" if self.is_local else self.root.split("://", 1)[0]

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def uri(self, *parts: str) -> str:
        """A location other tools (DuckDB, polars) can open."""
        return self.to_uri(self.path(*parts))

    def to_uri(self, path: str) -> str:
        """A path of :attr:`fs` (as :meth:`files` returns) as a location other tools open."""
        return path if self.is_local else f"{self.scheme}://{path}"

    def dir(self, asset: str, partition: str | None = None, kind: str = DATA) -> str:
        segment = _partition_segment(partition)
        return self.path(kind, asset, segment) if segment else self.path(kind, asset)

    def glob(self, asset: str, partitioned: bool = True, kind: str = DATA) -> str:
        """Glob over all partitions' files, for DuckDB ``read_parquet``."""
        pattern = ("*", "*.parquet") if partitioned else ("*.parquet",)
        return self.uri(kind, asset, *pattern)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_published(self, directory: str) -> bool:
        """A published directory: present locally, committed (marker present) on object stores."""
        if self.is_local:
            return self.exists(directory)
        return self.exists(posixpath.join(directory, COMMIT_MARKER))

    def has_partition(self, asset: str, partition: str | None = None, kind: str = DATA) -> bool:
        return self.is_published(self.dir(asset, partition, kind))

    def files(self, asset: str, partition: str | None = None, kind: str = DATA) -> list[str]:
        directory = self.dir(asset, partition, kind)
        if not self.is_published(directory):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(directory, recursive=False))
        return sorted(
            i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        )

    def partitions(self, asset: str, kind: str = DATA) -> list[str]:
        directory = self.path(kind, asset)
        prefix = f"{PARTITION_COLUMN}="
        if self.is_local:
            if not self.exists(directory):
                return []
            infos = self.fs.get_file_info(pafs.FileSelector(directory, recursive=False))
            names = [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
        else:  # one listing finds the commit markers, rather than a request per partition
            selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
            infos = self.fs.get_file_info(selector)
            names = [
                posixpath.basename(posixpath.dirname(i.path))
                for i in infos
                if posixpath.basename(i.path) == COMMIT_MARKER
                and posixpath.dirname(posixpath.dirname(i.path)) == directory
            ]
        return sorted(name[len(prefix) :] for name in names if name.startswith(prefix))

    def schema(self, asset: str, partition: str | None = None, kind: str = DATA) -> pa.Schema:
        files = self.files(asset, partition, kind)
        if not files:
            raise FileNotFoundError(f"no output for {kind}/{asset} partition {partition!r}")
        return pq.read_schema(files[0], filesystem=self.fs)

    def count_rows(self, asset: str, partition: str | None = None, kind: str = DATA) -> int:
        """Row count from Parquet footers, without reading data."""
        return sum(
            pq.ParquetFile(f, filesystem=self.fs).metadata.num_rows
            for f in self.files(asset, partition, kind)
        )

    def iter_batches(
        self,
        asset: str,
        partition: str | None = None,
        *,
        kind: str = DATA,
        columns: list[str] | None = None,
        batch_size: int = 256,
    ) -> Iterator[pa.RecordBatch]:
        files = self.files(asset, partition, kind)
        if not files and not self.has_partition(asset, partition, kind):
            raise FileNotFoundError(
                f"{asset} has no output for partition {partition!r} at "
                f"{self.dir(asset, partition, kind)}: materialize it first"
            )
        for path in files:
            with self.fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                yield from parquet.iter_batches(batch_size=batch_size, columns=columns)

    def read_table(
        self,
        asset: str,
        partition: str | None = None,
        *,
        kind: str = DATA,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Whole partition in memory: only for compact outputs (signatures, reports)."""
        schema = self.schema(asset, partition, kind)
        batches = list(self.iter_batches(asset, partition, kind=kind, columns=columns))
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return pa.Table.from_batches(batches, schema=schema)

    @contextlib.contextmanager
    def writer(
        self,
        asset: str,
        partition: str | None,
        schema: pa.Schema,
        *,
        reject_schema: pa.Schema = REJECT_SCHEMA,
        target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES,
    ) -> Iterator[PartitionWriter]:
        """Stage a partition's kept rows and rejects; publish both only if the block succeeds."""
        with self._staging(f"{asset}-{partition or 'all'}") as staging:
            writer = PartitionWriter(
                data=_RollingParquetWriter(
                    self.fs, posixpath.join(staging, DATA), schema, target_file_bytes
                ),
                rejects=_RollingParquetWriter(
                    self.fs, posixpath.join(staging, REJECTS), reject_schema, target_file_bytes
                ),
            )
            try:
                yield writer
                writer.close()
                # Rejects first: a reader that finds the data directory also finds its ledger.
                for kind in (REJECTS, DATA):
                    self._publish(staging, kind, self.dir(asset, partition, kind))
            finally:
                writer.abort()

    @contextlib.contextmanager
    def staged_directory(self, *parts: str) -> Iterator[str]:
        """A staging directory for arbitrary files (a release); published at ``path(*parts)``
        only if the block succeeds, replacing what was there."""
        with self._staging("-".join(parts)) as staging:
            files = posixpath.join(staging, "files")
            _make_dir(self.fs, files)
            yield files
            self._publish(staging, "files", self.path(*parts))

    @contextlib.contextmanager
    def _staging(self, label: str) -> Iterator[str]:
        """A write's own staging directory, removed when the block ends, and left (with its
        lock released) for :meth:`clean_staging` when the process is killed."""
        staging = self.path(_STAGING, f"{label}-{uuid.uuid4().hex}")
        lock = staging + _LOCK_SUFFIX
        with _held(lock) if self.is_local else contextlib.nullcontext():
            try:
                yield staging
            finally:
                self._delete_dir(staging)
                if self.is_local:  # unlinked while held: see _held
                    os.unlink(lock)

    def _publish(self, staging: str, name: str, final: str) -> None:
        """Make ``staging/name`` visible at ``final`` all at once (see the module docstring)."""
        staged = posixpath.join(staging, name)
        if not self.is_local:
            self._publish_by_copy(staged, final)
            return
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        # Retired into this write's staging directory: a rename on the same filesystem (the
        # storage root), and never a directory a data glob would read if the run died here.
        retired = posixpath.join(staging, f"retired-{name}")
        if self.exists(final):
            self.fs.move(final, retired)
        self.fs.move(staged, final)
        self._delete_dir(retired)

    def _publish_by_copy(self, staged: str, final: str) -> None:
        """Object stores: unpublish the old version, copy the staged objects, commit last."""
        infos = self.fs.get_file_info(pafs.FileSelector(staged, recursive=True))
        names = sorted(
            posixpath.relpath(i.path, staged) for i in infos if i.type == pafs.FileType.File
        )
        marker = posixpath.join(final, COMMIT_MARKER)
        self._unpublish(final)
        self._delete_dir(final)
        for name in names:  # no directories to create: object-store keys need no parent
            self.fs.copy_file(posixpath.join(staged, name), posixpath.join(final, name))
        with self.fs.open_output_stream(marker) as stream:
            stream.write(json.dumps({"files": names}).encode())

    def _unpublish(self, directory: str) -> None:
        """Object stores: remove the commit marker first, so no reader sees a partial delete."""
        if not self.is_local:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(posixpath.join(directory, COMMIT_MARKER))

    def _delete_dir(self, path: str) -> None:
        if self.is_local:
            shutil.rmtree(path, ignore_errors=True)
        else:
            self.fs.delete_dir_contents(path, missing_dir_ok=True)

    def delete_partition(self, asset: str, partition: str | None = None) -> None:
        # Data first: a reader that finds the data directory also finds its ledger.
        for kind in (DATA, REJECTS):
            directory = self.dir(asset, partition, kind)
            self._unpublish(directory)
            self._delete_dir(directory)

    def put_directory(self, local: str | Path, *parts: str) -> str:
        """Publish a local directory's files at ``path(*parts)``, replacing what was there."""
        source = pafs.LocalFileSystem()
        root = str(Path(local).resolve())
        infos = source.get_file_info(pafs.FileSelector(root, recursive=True))
        with self.staged_directory(*parts) as staging:
            for info in infos:
                if info.type != pafs.FileType.File:
                    continue
                target = posixpath.join(staging, posixpath.relpath(info.path, root))
                _make_dir(self.fs, posixpath.dirname(target))
                pafs.copy_files(info.path, target, source, self.fs)
        return self.path(*parts)

    @contextlib.contextmanager
    def local_directory(self, *parts: str) -> Iterator[Path]:
        """A published directory as a local path (object stores: a temporary download)."""
        directory = self.path(*parts)
        if not self.is_published(directory):
            raise FileNotFoundError(f"nothing published at {self.uri(*parts)}")
        if self.is_local:
            yield Path(directory)
            return
        with tempfile.TemporaryDirectory(prefix="fineharbor-") as tmp:
            infos = self.fs.get_file_info(pafs.FileSelector(directory, recursive=True))
            for info in infos:
                name = posixpath.relpath(info.path, directory)
                if info.type != pafs.FileType.File or name == COMMIT_MARKER:
                    continue
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(info.path, str(target), self.fs, pafs.LocalFileSystem())
            yield Path(tmp)

    def clean_staging(self, now: float | None = None) -> list[str]:
        """Remove what dead writes left under ``_staging/`` (unpublished outputs, retired old
        ones); returns the removed paths. Called at every run start; concurrent runs are safe:

        - local: a write holds an exclusive ``flock`` on ``_staging/<id>.lock`` for its whole
          life, and the kernel releases it when the process dies (``kill -9`` included), so a
          staging directory whose lock can be taken belongs to a dead process;
        - object store (no locks): a staged write whose newest object is older than
          :data:`STALE_STAGING_S`.
        """
        root = self.path(_STAGING)
        if not self.is_local:
            if not self.exists(root):
                return []
            return self._clean_stale_objects(root, time.time() if now is None else now)
        removed = self._remove_legacy_retired()
        if not os.path.isdir(root):
            return removed
        for entry in sorted(os.listdir(root)):
            name = entry.removesuffix(_LOCK_SUFFIX)
            if entry != name and os.path.lexists(posixpath.join(root, name)):
                continue  # handled with its directory
            path = posixpath.join(root, name)
            with _held(path + _LOCK_SUFFIX, wait=False) as free:
                if free:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path)
                    elif os.path.lexists(path):
                        os.unlink(path)
                        removed.append(path)
                    os.unlink(path + _LOCK_SUFFIX)
        return removed

    def _remove_legacy_retired(self) -> list[str]:
        """Earlier versions retired a replaced output beside it (``source=<p>.retired-<hex>``),
        where a killed run left it for every glob to read. Nothing creates those any more, and a
        retired output is by definition replaced, so any found is removed."""
        removed = []
        for kind in (DATA, REJECTS):
            top = self.path(kind)
            parents = [top] + [e.path for e in _scandir(top) if e.is_dir(follow_symlinks=False)]
            for parent in parents:
                for entry in _scandir(parent):
                    if _LEGACY_RETIRED.fullmatch(entry.name) and entry.is_dir(
                        follow_symlinks=False
                    ):
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed.append(entry.path)
        return removed

    def _clean_stale_objects(self, root: str, now: float) -> list[str]:
        newest: dict[str, float] = {}
        for info in self.fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            write = posixpath.relpath(info.path, root).split("/", 1)[0]
            mtime = info.mtime.timestamp() if info.mtime is not None else now
            newest[write] = max(newest.get(write, mtime), mtime)
        stale = [w for w, mtime in sorted(newest.items()) if now - mtime >= STALE_STAGING_S]
        for write in stale:
            self._delete_dir(posixpath.join(root, write))
        return [posixpath.join(root, w) for w in stale]


_LEGACY_RETIRED = re.compile(r".+\.retired-[0-9a-f]{32}")


def _scandir(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextlib.contextmanager
def _held(lock: str, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on the file ``lock`` (created if missing); yields whether it is
    held (``wait=False``: False at once when another process holds it).

    The holder checks that the path still names the inode it locked: a cleaner that took the
    lock of a dead write unlinks the file while holding it, and a writer that opened the same
    name just before must not go on with a lock nobody else can see."""
    os.makedirs(posixpath.dirname(lock), exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield True
                return
        finally:
            os.close(fd)
        if not wait:
            yield False  # unlinked by another cleaner meanwhile: nothing left to do
            return


def _make_dir(fs: pafs.FileSystem, path: str) -> None:
    """Local directories must exist before a file is written; object-store keys need none."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path, recursive=True)


class _RollingParquetWriter:
    """Writes record batches to part-NNNNN.parquet files, starting a new file past a size."""

    def __init__(
        self, fs: pafs.FileSystem, directory: str, schema: pa.Schema, target_file_bytes: int
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.schema = schema
        self.target_file_bytes = target_file_bytes
        self._file_index = 0
        self._file_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None

    def _open(self) -> pq.ParquetWriter:
        _make_dir(self.fs, self.directory)
        path = posixpath.join(self.directory, f"part-{self._file_index:05d}.parquet")
        self._sink = self.fs.open_output_stream(path)
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._file_index += 1
        self._file_bytes = 0
        return self._writer

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if data.num_rows == 0:
            return
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        table = _conform(table, self.schema)
        writer = self._writer or self._open()
        writer.write_table(table, row_group_size=DEFAULT_ROW_GROUP_ROWS)
        self._file_bytes += table.nbytes
        if self._file_bytes >= self.target_file_bytes:
            self._finish_file()

    def _finish_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None
            self._sink = None

    def close(self) -> None:
        if self._writer is None and self._file_index == 0:
            # An empty partition still publishes one file so its schema is known downstream.
            self._open()
        self._finish_file()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._finish_file()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast to the declared schema; a missing or mistyped column is a bug, so raise."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"output is missing columns {missing}; expected {schema.names}")
    return table.select(schema.names).cast(schema)


@dataclass
class PartitionWriter:
    """Kept rows and rejected rows of one stage partition, staged together."""

    data: _RollingParquetWriter
    rejects: _RollingParquetWriter
    reason_counts: Counter = field(default_factory=Counter)

    def write(self, kept: pa.Table | pa.RecordBatch) -> None:
        self.data.write(kept)

    def reject(self, rejected: pa.Table | pa.RecordBatch) -> None:
        if rejected.num_rows:
            self.reason_counts.update(rejected.column("reason").to_pylist())
        self.rejects.write(rejected)

    def close(self) -> None:
        self.data.close()
        self.rejects.close()

    def abort(self) -> None:
        self.data.abort()
        self.rejects.abort()
