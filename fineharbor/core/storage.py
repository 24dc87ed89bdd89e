"""The one place that knows where data lives.

Layout under the root (``FINEHARBOR_HOME``)::

    data/<asset>/source=<partition>/part-NNNNN.parquet     per-source stages (Hive style)
    data/<asset>/part-NNNNN.parquet                        global stages
    rejects/<asset>/source=<partition>/part-NNNNN.parquet  what a stage dropped, with a reason

Every path goes through :class:`Storage`, built on ``pyarrow.fs`` so the same code serves a local
directory and an object store (``s3://bucket/prefix``; endpoint and credentials from the standard
``AWS_*`` environment variables). Partitions are written to a staging directory and published
only when complete, so a killed run leaves the previous good output or nothing:

- local: the staged directory is renamed into place (``rename`` is atomic);
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
import json
import posixpath
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
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
COMMIT_MARKER = "_committed.json"

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
        staging = self.path(_STAGING, f"{asset}-{partition or 'all'}-{uuid.uuid4().hex}")
        writer = PartitionWriter(
            fs=self.fs,
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
            self._publish(posixpath.join(staging, REJECTS), self.dir(asset, partition, REJECTS))
            self._publish(posixpath.join(staging, DATA), self.dir(asset, partition, DATA))
        finally:
            writer.abort()
            self._delete_dir(staging)

    @contextlib.contextmanager
    def staged_directory(self, *parts: str) -> Iterator[str]:
        """A staging directory for arbitrary files (a release); published at ``path(*parts)``
        only if the block succeeds, replacing what was there."""
        staging = self.path(_STAGING, f"{'-'.join(parts)}-{uuid.uuid4().hex}")
        _make_dir(self.fs, staging)
        try:
            yield staging
            self._publish(staging, self.path(*parts))
        finally:
            self._delete_dir(staging)

    def _publish(self, staged: str, final: str) -> None:
        """Make ``staged`` visible at ``final`` all at once (see the module docstring)."""
        if not self.is_local:
            self._publish_by_copy(staged, final)
            return
        parent = posixpath.dirname(final)
        self.fs.create_dir(parent, recursive=True)
        retired = f"{final}.retired-{uuid.uuid4().hex}"
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

    def clean_staging(self) -> None:
        """Remove leftovers of killed runs; their partitions were never published."""
        self._delete_dir(self.path(_STAGING))


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
        self.rows = 0
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
        self.rows += table.num_rows
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

    fs: pafs.FileSystem
    data: _RollingParquetWriter
    rejects: _RollingParquetWriter

    def write(self, kept: pa.Table | pa.RecordBatch) -> None:
        self.data.write(kept)

    reason_counts: Counter = field(default_factory=Counter)

    def reject(self, rejected: pa.Table | pa.RecordBatch) -> None:
        if rejected.num_rows:
            self.reason_counts.update(rejected.column("reason").to_pylist())
        self.rejects.write(rejected)

    def write_all(self, kept: Iterable[pa.Table | pa.RecordBatch]) -> None:
        for item in kept:
            self.write(item)

    @property
    def kept_rows(self) -> int:
        return self.data.rows

    @property
    def rejected_rows(self) -> int:
        return self.rejects.rows

    def close(self) -> None:
        self.data.close()
        self.rejects.close()

    def abort(self) -> None:
        self.data.abort()
        self.rejects.abort()
