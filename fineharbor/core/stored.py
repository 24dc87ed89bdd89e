"""Each byte stored once: what a stage writes versus the rows its readers see.

Two kinds of reference, declared on the stage table (:class:`~fineharbor.core.pipeline.Stage`):

- ``rows_of``: a stage that decides (``deduplicated_samples``, ``decontaminated_samples``,
  ``scored_samples``) writes only ``sample_id`` and the columns it adds (scores, ratings,
  signals), never images or texts again. Its rows are the ``rows_of`` stage's rows with those
  ids, in its own order, with its columns after them (:func:`stored_schema`).
- ``images_of``: ``unified_samples`` and ``cleaned_samples`` write an image whose bytes equal
  the bytes of image ``j`` of the same sample upstream with ``bytes`` null (its ``path`` kept):
  mapping never changes images, and cleaning stores only the images it re-encoded (resized,
  converted, re-saved). A null ``bytes`` there means "image ``j`` of this ``sample_id`` in the
  ``images_of`` stage, as its readers see it" (so a cleaned image may point, through
  ``unified_samples``, at ``raw_samples``). A missing raw image (null bytes) stays null.

Every reader of a stage's rows goes through :func:`read_stage_rows` (streaming record batches)
or :func:`read_stage_table`; the distributed engine resolves its units with
:class:`StageRows`; the DuckDB catalog's views do the same join in SQL
(:func:`fineharbor.core.catalog.rows_sql`). So every query, preview, score and release sees the
same rows as when every stage held a full copy. A partition written before references existed
(full columns) reads unchanged: columns a stage stores are taken from its own files.

Rows are found upstream by ``sample_id`` through a sorted index of the upstream partition's ids
(:class:`_RowIndex`: about 40 bytes a row, the partition's size, not the corpus's), reading only
the row groups that hold them (most recent few cached: downstream rows come in upstream order).
A referenced row that is gone (the upstream stage was re-materialized with different rows since)
fails the read with a message naming both stages, never silently.

A reader that knows which rows it wants before reading (the release's shard tasks) locates them
once (:class:`PartitionIndex`: the indexes of a partition along its chain of references, built
by one process) and hands each worker only the locations of its own rows
(:meth:`PartitionIndex.subset`); :func:`read_located_rows` then reads the row groups that hold
them and nothing else, so the work grows with the rows read, not with the partition times the
number of readers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fineharbor.core.pipeline import BY_NAME, Stage, resolve
from fineharbor.core.storage import Storage

if TYPE_CHECKING:  # the engine reads stages through this module
    from fineharbor.core.distributed.engine import BatchWork

ID = "sample_id"
IMAGES = "images"
# Row groups of an upstream partition held at once (each up to 512 rows with their images).
_CACHED_ROW_GROUPS = 2

Batches = Iterable[pa.RecordBatch]
StreamFn = Callable[[Batches], Iterator[tuple[pa.Table, pa.Table]]]


def _stage(asset: str) -> Stage | None:
    return BY_NAME.get(asset)


@functools.cache
def declared_schema(asset: str) -> pa.Schema | None:
    stage = _stage(asset)
    return resolve(stage.schema) if stage is not None and stage.schema else None


def stored_schema(asset: str, schema: pa.Schema) -> pa.Schema:
    """What ``asset``'s files hold for rows of ``schema``: for a ``rows_of`` stage,
    ``sample_id`` and the columns it adds; otherwise ``schema`` itself."""
    stage = _stage(asset)
    if stage is None or stage.rows_of is None:
        return schema
    base = set(declared_schema(stage.rows_of).names)
    return pa.schema([f for f in schema if f.name == ID or f.name not in base])


def holds_rows(asset: str, written: pa.Schema) -> bool:
    """Whether files of ``written`` hold the rows they keep, not references (a ``rows_of``
    stage written before references, or by hand): read as they are. Stored references never
    hold a column of ``rows_of`` other than ``sample_id``."""
    base = declared_schema(BY_NAME[asset].rows_of)
    return any(name != ID and name in base.names for name in written.names)


def stage_schema(storage: Storage, asset: str, partition: str | None = None) -> pa.Schema:
    """The schema of ``asset``'s rows as readers see them (references resolved)."""
    written = storage.schema(asset, partition)
    stage = _stage(asset)
    if stage is None or stage.rows_of is None or holds_rows(asset, written):
        return written
    base = stage_schema(storage, stage.rows_of, partition)
    return pa.schema([*base, *(f for f in written if f.name not in base.names)])


def read_stage_rows(
    storage: Storage,
    asset: str,
    partition: str | None = None,
    *,
    columns: list[str] | None = None,
    batch_size: int = 256,
    sample_ids: pa.Array | None = None,
) -> Iterator[pa.RecordBatch]:
    """``asset``'s rows of ``partition`` as record batches, references resolved, streaming;
    ``sample_ids``: only those rows (filtered before anything upstream is read)."""
    rows = StageRows(storage, asset, partition, columns)
    read = rows.read_columns
    if sample_ids is not None and read is not None and ID not in read:
        read = [ID, *read]
    batches = storage.iter_batches(asset, partition, columns=read, batch_size=batch_size)
    if sample_ids is not None:
        batches = (b.filter(pc.is_in(b.column(ID), value_set=sample_ids)) for b in batches)
        batches = (b for b in batches if b.num_rows)
        if read is not rows.read_columns:
            batches = (b.select(rows.read_columns) for b in batches)
    yield from rows.resolve(batches)


def read_stage_table(
    storage: Storage,
    asset: str,
    partition: str | None = None,
    *,
    columns: list[str] | None = None,
) -> pa.Table:
    """:func:`read_stage_rows` as one table (only for columns that fit in memory)."""
    schema = stage_schema(storage, asset, partition)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    batches = list(read_stage_rows(storage, asset, partition, columns=columns, batch_size=8192))
    return pa.Table.from_batches([b.select(schema.names) for b in batches], schema=schema)


class StageRows:
    """How to read ``columns`` of one partition of ``asset`` with its references resolved:
    which columns to read from its own files (:attr:`read_columns`) and :meth:`resolve` for
    batches of them. Picklable before first use (the Ray engine sends it to its actors);
    upstream indexes are built lazily, once per object."""

    def __init__(
        self,
        storage: Storage,
        asset: str,
        partition: str | None,
        columns: list[str] | None = None,
        indexes: Mapping[str, _RowIndex] | None = None,
    ) -> None:
        self.storage, self.asset, self.partition = storage, asset, partition
        # row indexes of upstream partitions located beforehand (PartitionIndex), by asset
        self.indexes = dict(indexes or {})
        stage = _stage(asset)
        self.rows_of = stage.rows_of if stage is not None else None
        self.images_of = stage.images_of if stage is not None else None
        self.wanted = columns
        self.read_columns = columns
        self.base_columns: list[str] = []
        if self.rows_of is not None:
            if not storage.has_partition(asset, partition):
                next(storage.iter_batches(asset, partition))  # the usual "materialize it first"
            written = storage.schema(asset, partition).names
            wanted = columns or stage_schema(storage, asset, partition).names
            self.wanted = list(wanted)
            logical = stage_schema(storage, asset, partition)
            self.schema = pa.schema([logical.field(c) for c in self.wanted])
            self.read_columns = [ID, *(c for c in wanted if c in written and c != ID)]
            self.base_columns = [c for c in wanted if c not in written]
        elif self.images_of is not None and columns is not None and IMAGES in columns:
            self.read_columns = list(dict.fromkeys([ID, *columns]))
        self._upstream: StageRows | None = None
        self._index: _RowIndex | None = None

    @property
    def needs_upstream(self) -> bool:
        if self.rows_of is not None:
            return bool(self.base_columns)
        return self.images_of is not None and (self.wanted is None or IMAGES in self.wanted)

    def _upstream_rows(self) -> StageRows:
        if self._upstream is None:
            if self.rows_of is not None:
                self._upstream = StageRows(
                    self.storage,
                    self.rows_of,
                    self.partition,
                    [ID, *self.base_columns],
                    self.indexes,
                )
            else:
                self._upstream = StageRows(
                    self.storage, self.images_of, self.partition, [ID, IMAGES], self.indexes
                )
            self._index = self.indexes.get(self._upstream.asset)
            if self._index is None:
                self._index = _RowIndex.build(self.storage, self._upstream.asset, self.partition)
        return self._upstream

    def resolve(self, batches: Batches) -> Iterator[pa.RecordBatch]:
        """Batches of :attr:`read_columns` as batches of the wanted columns, resolved."""
        for batch in batches:
            if not self.needs_upstream:
                yield self._select(batch)
                continue
            if batch.num_rows == 0 or (self.rows_of is None and not _references(batch)):
                if self.rows_of is None:
                    yield self._select(batch)
                continue
            upstream = self._upstream_rows()
            assert self._index is not None
            try:
                stored = self._index.take(batch.column(ID), upstream.read_columns)
            except KeyError as missing:
                raise LookupError(
                    f"{self.asset} {self.partition}: {missing.args[0]} of its sample ids are not "
                    f"in {upstream.asset} any more (re-materialized with other rows since): "
                    f"materialize {self.asset} again"
                ) from None
            found = pa.Table.from_batches(list(upstream.resolve(stored.to_batches())))
            if self.rows_of is not None:
                columns = [
                    found.column(name).combine_chunks()
                    if name in self.base_columns
                    else batch.column(name)
                    for name in self.wanted
                ]
                yield pa.RecordBatch.from_arrays(columns, schema=self.schema)
                continue
            images = fill_images(batch.column(IMAGES), found.column(IMAGES))
            batch = batch.set_column(batch.schema.get_field_index(IMAGES), IMAGES, images)
            yield self._select(batch)

    def _select(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch if self.wanted is None else batch.select(self.wanted)


class _RowIndex:
    """Where each ``sample_id`` of a stored partition lies: row group (file path, group in the
    file) and row, for all of its rows (:meth:`build`) or some (:meth:`subset`)."""

    def __init__(
        self,
        storage: Storage,
        groups: list[tuple[str, int]],
        starts: np.ndarray,
        ids: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        self.storage = storage
        self.groups = groups  # (file path, row group in it) per group
        self.starts = starts  # first row of each group, and the row count last
        order = np.argsort(ids, kind="stable")
        self.sorted = ids[order]
        self.order = rows[order]  # the row of each sorted id
        self.cache: OrderedDict[tuple[int, tuple[str, ...]], pa.Table] = OrderedDict()
        # the file last read, open: its footer is parsed once, not once per row group
        self._open: tuple[str, pq.ParquetFile] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "cache": OrderedDict(), "_open": None}

    def close(self) -> None:
        """Drop the row groups read and the open file: a finished read holds none of its rows
        (a driver keeps every task's index alive while the others run)."""
        self.cache.clear()
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def _file(self, path: str) -> pq.ParquetFile:
        if self._open is None or self._open[0] != path:
            if self._open is not None:
                self._open[1].close()
            self._open = (path, pq.ParquetFile(path, filesystem=self.storage.fs))
        return self._open[1]

    @classmethod
    def build(cls, storage: Storage, asset: str, partition: str | None) -> _RowIndex:
        """Every row of the partition (only ids are read)."""
        files = storage.files(asset, partition)
        if not files:
            next(storage.iter_batches(asset, partition))  # the usual "materialize it first"
        ids, starts = [], [0]
        groups: list[tuple[str, int]] = []
        for path in files:
            with storage.fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.metadata.num_row_groups):
                    groups.append((path, group))
                    starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
                ids.append(parquet.read(columns=[ID]).column(ID))
        values = _id_bytes(pa.chunked_array(ids, pa.string()))
        return cls(storage, groups, np.asarray(starts, np.int64), values, np.arange(len(values)))

    def positions(self, ids: pa.Array) -> np.ndarray:
        wanted = _id_bytes(ids)
        hit, at = self._find(wanted)
        if not hit.all():
            raise KeyError(int((~hit).sum()))
        return self.order[at]

    def _find(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.sorted):
            return np.zeros(len(wanted), bool), np.zeros(len(wanted), np.int64)
        at = np.minimum(np.searchsorted(self.sorted, wanted), len(self.sorted) - 1)
        return self.sorted[at] == wanted, at

    def subset(self, ids: Sequence[str] | pa.Array) -> _RowIndex:
        """The index of ``ids`` alone (those it holds; a missing one fails when taken), over
        only the row groups that hold them: its size is that of ``ids``."""
        wanted = _id_bytes(pa.array(ids, pa.string()))
        hit, at = self._find(wanted)
        wanted, rows = wanted[hit], self.order[at[hit]]
        group_of = np.searchsorted(self.starts, rows, side="right") - 1
        touched, local = np.unique(group_of, return_inverse=True)
        sizes = self.starts[touched + 1] - self.starts[touched]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        rows = starts[local] + rows - self.starts[group_of]
        groups = [self.groups[int(g)] for g in touched]
        return _RowIndex(self.storage, groups, starts, wanted, rows)

    def _group(self, number: int, columns: tuple[str, ...]) -> pa.Table:
        key = (number, columns)
        table = self.cache.get(key)
        if table is None:
            path, group = self.groups[number]
            parquet = self._file(path)
            if group >= parquet.metadata.num_row_groups:
                raise FileNotFoundError(f"{path}: no row group {group}")
            table = parquet.read_row_group(group, columns=list(columns))
            self.cache[key] = table
            while len(self.cache) > _CACHED_ROW_GROUPS:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return table

    def take(self, ids: pa.Array, columns: list[str] | None) -> pa.Table:
        """The rows of ``ids``, in that order; KeyError (how many) when some are not where
        the index says (not indexed, or the partition was rewritten since)."""
        rows = self.positions(ids)
        group_of = np.searchsorted(self.starts, rows, side="right") - 1
        if columns is None:
            names = tuple(pq.read_schema(self.groups[0][0], filesystem=self.storage.fs).names)
        else:
            names = tuple(columns)
        pieces, order = [], []
        for number in np.unique(group_of):
            mine = np.flatnonzero(group_of == number)
            offsets = rows[mine] - self.starts[number]
            try:
                group = self._group(int(number), names)
            except FileNotFoundError:  # rewritten since it was indexed: its rows are gone
                raise KeyError(len(mine)) from None
            if offsets.max() >= group.num_rows:
                raise KeyError(len(mine))
            pieces.append(group.take(pa.array(offsets)))
            order.append(mine)
        if not pieces:
            return self._group(0, names).slice(0, 0)
        table = pa.concat_tables(pieces)
        back = np.empty(len(rows), np.int64)
        back[np.concatenate(order)] = np.arange(len(rows))
        table = table.take(pa.array(back)).combine_chunks()
        if ID in names:
            moved = _id_bytes(table.column(ID)) != _id_bytes(ids)
            if moved.any():
                raise KeyError(int(moved.sum()))
        return table


class PartitionIndex:
    """The row indexes of one partition of ``asset`` and of the same partition of every stage
    its rows reference (``rows_of`` / ``images_of``, transitively), built once (ids only);
    an upstream stage without that partition is left to the reader (its usual error)."""

    def __init__(self, storage: Storage, asset: str, partition: str | None) -> None:
        self.asset, self.partition = asset, partition
        self.indexes: dict[str, _RowIndex] = {}
        name: str | None = asset
        while name is not None and (name == asset or storage.has_partition(name, partition)):
            self.indexes[name] = _RowIndex.build(storage, name, partition)
            stage = _stage(name)
            name = (stage.rows_of or stage.images_of) if stage is not None else None

    def subset(self, ids: Sequence[str] | pa.Array) -> PartitionIndex:
        """Where ``ids``'s rows lie, in every indexed stage (small: sent to workers)."""
        located = object.__new__(PartitionIndex)
        located.asset, located.partition = self.asset, self.partition
        located.indexes = {name: index.subset(ids) for name, index in self.indexes.items()}
        return located


def read_located_rows(
    storage: Storage,
    located: PartitionIndex,
    sample_ids: Sequence[str] | pa.Array,
    *,
    batch_size: int = 256,
) -> Iterator[pa.RecordBatch]:
    """The rows of ``sample_ids`` (in that order, all in ``located``), references resolved,
    reading only the row groups that hold them. LookupError when one is no longer where it
    was located (the partition or one it references was rewritten since)."""
    asset, partition = located.asset, located.partition
    rows = StageRows(storage, asset, partition, None, located.indexes)
    own = located.indexes[asset]
    ids = pa.array(sample_ids, pa.string())
    try:
        for start in range(0, len(ids), batch_size):
            try:
                table = own.take(ids.slice(start, batch_size), rows.read_columns)
            except KeyError as missing:
                raise LookupError(
                    f"{asset} {partition}: {missing.args[0]} of the rows located for this read "
                    "are not where they were (re-materialized since)"
                ) from None
            yield from rows.resolve(table.to_batches())
    finally:
        for index in located.indexes.values():
            index.close()


def _id_bytes(ids) -> np.ndarray:
    values = ids.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=bytes) if len(values) else np.zeros(0, "S1")


def _references(batch: pa.RecordBatch) -> bool:
    """Whether any image of ``batch`` is a reference (null bytes)."""
    return _list_array(batch.column(IMAGES)).flatten().field("bytes").null_count > 0


def _offsets(images: pa.ListArray) -> np.ndarray:
    lengths = pc.fill_null(pc.list_value_length(images), 0).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)


def _list_array(images) -> pa.ListArray:
    return images.combine_chunks() if isinstance(images, pa.ChunkedArray) else images


def fill_images(stored, upstream) -> pa.Array:
    """``stored`` images with every null ``bytes`` taken from ``upstream`` (same rows, same
    image count per row)."""
    stored, upstream = _list_array(stored), _list_array(upstream)
    offsets = _offsets(stored)
    if not np.array_equal(offsets, _offsets(upstream)):
        raise ValueError("stored images and the images they reference differ in count")
    values, above = stored.flatten(), upstream.flatten()
    data = pc.coalesce(values.field("bytes"), above.field("bytes"))
    return _rebuild(stored, offsets, values, data)


def _rebuild(
    images: pa.ListArray, offsets: np.ndarray, values: pa.StructArray, data: pa.Array
) -> pa.Array:
    struct = pa.StructArray.from_arrays(
        [data, values.field("path")],
        fields=list(values.type),
        mask=values.is_null() if values.null_count else None,
    )
    mask = images.is_null() if images.null_count else None
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, mask=mask).cast(
        images.type
    )


def drop_unchanged_images(kept: pa.Table, inputs: pa.RecordBatch | pa.Table) -> pa.Table:
    """``kept`` with ``bytes`` null for every image identical to image ``j`` of the same
    sample in ``inputs`` (the rows the stage read, references resolved)."""
    if kept.num_rows == 0 or IMAGES not in kept.column_names:
        return kept
    inputs = inputs if isinstance(inputs, pa.Table) else pa.Table.from_batches([inputs])
    at = pc.index_in(kept.column(ID), value_set=inputs.column(ID).combine_chunks())
    if at.null_count:
        return kept  # a row the stage made itself: nothing to reference
    images = _list_array(kept.column(IMAGES).combine_chunks())
    before = _list_array(inputs.column(IMAGES).take(at).combine_chunks())
    offsets = _offsets(images)
    same_count = offsets == _offsets(before)
    values = images.flatten()
    data = values.field("bytes")
    if not same_count.all():
        return kept  # a stage that changed the image list keeps its own bytes
    same = pc.fill_null(pc.equal(data, before.flatten().field("bytes")), False)
    stripped = pc.if_else(same, pa.nulls(len(data), data.type), data)
    column = _rebuild(images, offsets, values, stripped)
    return kept.set_column(kept.schema.get_field_index(IMAGES), IMAGES, column)


def by_reference(run: StreamFn) -> StreamFn:
    """``run`` (one (kept, rejected) pair per input batch, in input order) writing unchanged
    images by reference to its input's (:func:`drop_unchanged_images`)."""

    def wrapped(batches: Batches) -> Iterator[tuple[pa.Table, pa.Table]]:
        pending: deque[pa.RecordBatch] = deque()

        def remembered() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                pending.append(batch)
                yield batch

        for kept, rejected in run(remembered()):
            yield drop_unchanged_images(kept, pending.popleft()), rejected

    return wrapped


def _referencing_setup(setup: Callable[..., StreamFn], *args, **models) -> StreamFn:
    return by_reference(setup(*args, **models))


def referencing(work: BatchWork) -> BatchWork:
    """``work`` whose stream writes the images it left unchanged by reference
    (:func:`by_reference`), wherever the engine runs it."""
    return dataclasses.replace(work, setup=_referencing_setup, args=(work.setup, *work.args))
