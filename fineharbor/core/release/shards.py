"""The release's shard files, written as independent tasks (:func:`map_tasks`).

The driver assigns the rows up front: a source's chosen rows in storage order (partitions in
config order), cut into Parquet shards of ``shard_rows``; consecutive shards are grouped into
tasks of about ``execution.task_rows`` rows. It also locates them, one partition at a time
(:class:`~fineharbor.core.stored.PartitionIndex`: ids only, once per partition and per stage the
rows reference), and gives each task where its own rows lie. Each task reads only the row groups
that hold its rows (:func:`~fineharbor.core.stored.read_located_rows`: references resolved as
every reader does), writes its shards into the release's staging directory and returns the files
and index entries: a release reads each input row once, whatever the number of tasks.

Which rows are caption pairs is known only once a row is read (its image bytes), so the
WebDataset tars are a second round of tasks, ``webdataset_shard_rows`` pairs per tar. The first
round already built each pair's tar members: a shard task appends them, as the tar bytes they
become (:func:`~fineharbor.core.release.writer.tar_member`), to a file of its own under the
staging directory, and a tar task concatenates the byte ranges of its pairs (no row is read or
decoded twice); those files are deleted before the release is published. Locally the same tasks
run in this process, so the files are byte-identical on either engine, and the driver lists them
in the order one sequential pass wrote them (a tar when its last pair is read, a shard when its
last row is; the last partial tar at the end).
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.distributed.tasks import TaskEngine, map_tasks
from fineharbor.core.interleaved import obelics_row, obelics_schema
from fineharbor.core.release.params import RATING_AXES
from fineharbor.core.release.select import min_column, ratings_column
from fineharbor.core.release.writer import (
    ReleaseFile,
    ReleaseFiles,
    caption_pair_members,
    parquet_bytes,
    release_row,
    release_schema,
    shard_name,
    tar_archive,
    tar_member,
    tar_name,
)
from fineharbor.core.storage import Storage
from fineharbor.core.stored import PartitionIndex, read_located_rows

ID = "sample_id"
# Under the staging directory: the shard tasks' tar members, deleted once the tars are written.
MEMBERS_DIR = "_tar_members"
# A source's chosen rows in storage order: one run of sample ids per partition, in config order.
Run = tuple[str, pa.Array]
# Caption pairs' tar members as the shard tasks wrote them, one row a pair: its position among
# the source's rows, the members file and the byte range in it (columnar: ~30 bytes a pair in
# the driver).
PAIRS_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64(), nullable=False),
        pa.field("path", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
    ]
)


# Carried into the release index and the WebDataset json, as LAION-5B's metadata carries them.
IMAGE_SIGNALS = ("punsafe", "pwatermark", "aesthetic_score")


RELEASE_INDEX_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin_key", pa.string(), nullable=False),
        pa.field("license", pa.string()),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("webdataset_shard", pa.string()),
        pa.field("n_images", pa.int64(), nullable=False),
        pa.field("n_turns", pa.int64(), nullable=False),
        pa.field("n_turns_dropped", pa.int64(), nullable=False),
        pa.field("clip_score", pa.float32()),
        pa.field("quality_score", pa.float32()),
        *[pa.field(name, pa.float32()) for name in IMAGE_SIGNALS],
        *[
            f
            for axis in RATING_AXES
            for f in (
                pa.field(ratings_column(axis), pa.list_(pa.int64())),
                pa.field(min_column(axis), pa.int64()),
            )
        ],
    ]
)


@dataclass(frozen=True)
class SourceLayout:
    """How one source's rows become files (everything a task needs besides its rows)."""

    source: str
    asset: str
    license: str | None
    shards: int  # Parquet shards of the source: the "of" in their names
    shard_rows: int
    tar_rows: int
    pairs: bool  # WebDataset tars of its caption pairs
    obelics: bool
    include_sample_id: bool
    blur_faces: bool
    signals: tuple[str, ...]  # image signal columns carried into the index and the tars


@dataclass(frozen=True)
class Placed:
    """Rows of one task: runs of sample ids by partition, in storage order, the first at
    ``start`` (its position among the source's rows), the kept turns of those that lost some
    to a judge minimum (the others keep all) and, by partition, where its rows lie
    (:func:`locate`)."""

    layout: SourceLayout
    start: int
    rows: tuple[Run, ...]
    turns: dict[str, list[int]]
    first: int = 0  # the task's first shard
    located: dict[str, PartitionIndex] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return run_rows(self.rows)


@dataclass(frozen=True)
class TarTask:
    """Tars of one task: ``layout.tar_rows`` of ``pairs`` each, the first numbered ``first``."""

    layout: SourceLayout
    first: int
    pairs: pa.Table  # PAIRS_SCHEMA


@dataclass
class Written:
    """What a task wrote: each file with the source position of its last row, the index
    entries of its rows (``RELEASE_INDEX_SCHEMA``: columnar, so the driver holds ~100 bytes a
    released row rather than a ~1 KB dict) and its caption pairs' tar members (shard tasks)."""

    files: list[tuple[ReleaseFile, int]] = field(default_factory=list)
    index: pa.Table = field(default_factory=RELEASE_INDEX_SCHEMA.empty_table)
    pairs: pa.Table = field(default_factory=PAIRS_SCHEMA.empty_table)


def storage_order(
    storage: Storage, asset: str, partitions: Sequence[str], chosen: pa.Array
) -> list[Run]:
    """The ``chosen`` sample ids by partition, in the order a read of the partitions one after
    the other meets them (only ids are read; held as Arrow, ~50 bytes a row)."""
    runs = []
    for partition in partitions:
        pieces = [
            batch.column(0).filter(pc.is_in(batch.column(0), value_set=chosen))
            for batch in storage.iter_batches(asset, partition, columns=[ID], batch_size=65_536)
        ]
        ids = pa.concat_arrays([pa.array([], pa.string()), *pieces])
        if len(ids):
            runs.append((partition, ids))
    return runs


def run_rows(runs: Sequence[Run]) -> int:
    return sum(len(ids) for _, ids in runs)


def _own_copy(data: pa.Array | pa.Table) -> pa.Array | pa.Table:
    """``data`` in buffers of its own: a slice pickles its whole parent into every Ray task."""
    return pc.take(data, pa.array(np.arange(len(data))))


def _rows_between(runs: Sequence[Run], start: int, stop: int) -> tuple[Run, ...]:
    """Positions ``[start, stop)`` of ``runs``, copied for the task that gets them."""
    rows, offset = [], 0
    for partition, ids in runs:
        low, high = max(start - offset, 0), min(stop - offset, len(ids))
        if low < high:
            rows.append((partition, _own_copy(ids.slice(low, high - low))))
        offset += len(ids)
    return tuple(rows)


def assign(
    layout: SourceLayout,
    runs: Sequence[Run],
    turns: dict[str, list[int]],
    unit: int,
    task_rows: int,
) -> list[Placed]:
    """The tasks over ``runs``: files of ``unit`` rows each (the last one shorter), whole
    files grouped into tasks of at most ``task_rows`` rows (one file at least)."""
    per_task = max(1, task_rows // unit) * unit
    total = run_rows(runs)
    with_turns = pa.array(list(turns), pa.string())
    tasks = []
    for start in range(0, total, per_task):
        rows = _rows_between(runs, start, start + per_task)
        lost = [pc.filter(ids, pc.is_in(ids, value_set=with_turns)) for _, ids in rows]
        kept = {i: turns[i] for ids in lost for i in ids.to_pylist()}
        tasks.append(Placed(layout, start, rows, kept, first=start // unit))
    return tasks


def locate(storage: Storage, tasks: Sequence[Placed]) -> list[Placed]:
    """``tasks`` with where their rows lie: each partition indexed once (its ids, and those
    of the stages it references), each task given the locations of its own rows only."""
    wanted = [dict(t.rows) for t in tasks]
    located: list[dict[str, PartitionIndex]] = [{} for _ in tasks]
    partitions = dict.fromkeys(p for rows in wanted for p in rows)
    for partition in partitions:  # one partition's indexes in memory at a time
        index = PartitionIndex(storage, tasks[0].layout.asset, partition)
        for rows, places in zip(wanted, located, strict=True):
            if partition in rows:
                places[partition] = index.subset(rows[partition])
    return [dataclasses.replace(t, located=at) for t, at in zip(tasks, located, strict=True)]


def _read(placed: Placed, storage: Storage) -> Iterator[tuple[int, dict]]:
    """The task's rows as dicts with their source positions, read where they were located;
    fails when storage no longer holds them there."""
    position = placed.start
    for partition, ids in placed.rows:
        try:
            for batch in read_located_rows(storage, placed.located[partition], ids):
                for row in batch.to_pylist():
                    yield position, row
                    position += 1
        except LookupError as error:
            raise LookupError(
                f"{placed.layout.asset} {partition}: the rows assigned to release shards changed "
                f"while the release was written ({error}): materialize release_mix again"
            ) from None


def _entry(layout: SourceLayout, row: dict, out: dict) -> dict:
    return {
        "sample_id": row[ID],
        "source": layout.source,
        "origin_key": row["origin_key"],
        "license": layout.license,
        "shard": "",
        "row": 0,
        "webdataset_shard": None,
        "n_images": len(out["images"]),
        "n_turns": len(out["texts"]),
        "n_turns_dropped": len(row["texts"] or []) - len(out["texts"]),
        "clip_score": row.get("clip_score"),
        "quality_score": row.get("quality_score"),
        **{name: row.get(name) for name in layout.signals},
        **{k: out[k] for axis in RATING_AXES for k in (ratings_column(axis), min_column(axis))},
    }


def _pair_members(layout: SourceLayout, row: dict, out: dict) -> list[tuple[str, bytes]] | None:
    extra = {
        "clip_score": row.get("clip_score"),
        "quality_score": row.get("quality_score"),
        **{name: row.get(name) for name in layout.signals},
    }
    return caption_pair_members({**out, ID: row[ID]}, row[ID], extra)


def _release_row(layout: SourceLayout, placed: Placed, row: dict) -> dict:
    return release_row(
        row, placed.turns.get(row[ID]), layout.include_sample_id, blur_faces=layout.blur_faces
    )


def write_shards(placed: Placed, storage: Storage, staging: str) -> Written:
    """Task: the Parquet shards of ``placed``'s rows, written under ``staging``, and its
    caption pairs' tar members in a file of its own under ``MEMBERS_DIR``."""
    with contextlib.ExitStack() as stack:
        return _write_shards(placed, storage, staging, stack)


def _write_shards(
    placed: Placed, storage: Storage, staging: str, stack: contextlib.ExitStack
) -> Written:
    layout = placed.layout
    schema = (obelics_schema if layout.obelics else release_schema)(layout.include_sample_id)
    files = ReleaseFiles(storage.fs, staging)
    written = Written()
    shard, rows, entries, indexes = placed.first, [], [], []
    members_path = posixpath.join(staging, MEMBERS_DIR, f"{layout.source}-{placed.first:05d}")
    members, offset, pairs = None, 0, []

    def flush(last: int) -> None:
        # a shard's index entries become Arrow with its rows: a task holds one shard of dicts
        nonlocal shard, rows, entries
        path = shard_name(layout.source, shard, layout.shards)
        table = pa.Table.from_pylist(rows, schema=schema)
        files.write(path, parquet_bytes(table), table.num_rows, "parquet", layout.source)
        written.files.append((files.files[-1], last))
        for number, entry in enumerate(entries):
            entry["shard"], entry["row"] = path, number
        indexes.append(pa.Table.from_pylist(entries, schema=RELEASE_INDEX_SCHEMA))
        shard, rows, entries = shard + 1, [], []

    for position, row in _read(placed, storage):
        out = _release_row(layout, placed, row)
        pair = _pair_members(layout, row, out) if layout.pairs else None
        if pair:
            data = b"".join(tar_member(name, value) for name, value in pair)
            if members is None:
                storage.fs.create_dir(posixpath.dirname(members_path), recursive=True)
                members = stack.enter_context(storage.fs.open_output_stream(members_path))
            members.write(data)
            pairs.append((position, offset, len(data)))
            offset += len(data)
        entries.append(_entry(layout, row, out))
        if layout.obelics:
            out = obelics_row(row, out["images"], layout.include_sample_id)
        rows.append(out)
        if len(rows) >= layout.shard_rows:
            flush(position)
    if rows:
        flush(placed.start + placed.size - 1)
    written.index = pa.concat_tables(
        [RELEASE_INDEX_SCHEMA.empty_table(), *indexes]
    ).combine_chunks()
    if pairs:
        position, start, size = np.asarray(pairs, np.int64).T
        path = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(len(pairs), np.int32)), pa.array([members_path])
        )
        written.pairs = pa.table([position, path, start, size], schema=PAIRS_SCHEMA)
    return written


def write_tars(task: TarTask, storage: Storage, staging: str) -> Written:
    """Task: the WebDataset tars of ``task``'s pairs (``tar_rows`` each), from the members
    the shard tasks wrote."""
    layout = task.layout
    files = ReleaseFiles(storage.fs, staging)
    written = Written()
    with contextlib.ExitStack() as stack:
        opened: dict[str, object] = {}

        def member_bytes(path: str, offset: int, size: int) -> bytes:
            if path not in opened:
                opened[path] = stack.enter_context(storage.fs.open_input_file(path))
            return opened[path].read_at(size, offset)

        for number, start in enumerate(range(0, task.pairs.num_rows, layout.tar_rows)):
            pairs = task.pairs.slice(start, layout.tar_rows).to_pydict()
            ranges = zip(pairs["path"], pairs["offset"], pairs["size"], strict=True)
            data = tar_archive([member_bytes(*member) for member in ranges])
            name = tar_name(layout.source, task.first + number)
            files.write(name, data, len(pairs["position"]), "webdataset", layout.source)
            written.files.append((files.files[-1], pairs["position"][-1]))
    return written


def write_sources(
    layouts: Sequence[tuple[SourceLayout, list[Run]]],
    turns: dict[str, list[int]],
    storage: Storage,
    staging: str,
    engine: TaskEngine,
) -> tuple[list[ReleaseFile], pa.Table]:
    """Every source's shards and tars as tasks on ``engine``: the files in the order one
    sequential pass writes them and the index entries, source after source. ``turns`` holds
    the kept turns of the rows that lost some to a judge minimum; the others keep all."""
    shard_tasks = [
        locate(storage, assign(layout, ordered, turns, layout.shard_rows, engine.task_rows))
        for layout, ordered in layouts
    ]
    flat = [t for tasks in shard_tasks for t in tasks]
    results = iter(map_tasks(write_shards, flat, engine=engine, shared=(storage, staging)))
    shard_results = [[next(results) for _ in tasks] for tasks in shard_tasks]
    tar_tasks, indexes = [], []
    for (layout, _), written in zip(layouts, shard_results, strict=True):
        pairs = pa.concat_tables([PAIRS_SCHEMA.empty_table(), *(w.pairs for w in written)])
        indexes.append(_with_tars(layout, pa.concat_tables(w.index for w in written), pairs))
        per_task = max(1, engine.task_rows // layout.tar_rows) * layout.tar_rows
        tar_tasks.append(
            [
                TarTask(
                    layout,
                    start // layout.tar_rows,
                    _own_copy(pairs.slice(start, per_task)),
                )
                for start in range(0, pairs.num_rows, per_task)
            ]
        )
    flat = [t for tasks in tar_tasks for t in tasks]
    results = iter(map_tasks(write_tars, flat, engine=engine, shared=(storage, staging)))
    files: list[ReleaseFile] = []
    for (layout, runs), written, tars in zip(layouts, shard_results, tar_tasks, strict=True):
        rows = run_rows(runs)
        # (source position of the last row, order at that row, file): a full tar is written
        # when its last pair is read, before that row's shard; the last partial tar at the end
        events = [(last, 1, f) for w in written for f, last in w.files]
        for _ in tars:
            for file, last in next(results).files:
                full = file.rows == layout.tar_rows
                events.append((last, 0, file) if full else (rows, 2, file))
        files += [f for _, _, f in sorted(events, key=lambda e: e[:2])]
    if any(w.pairs.num_rows for written in shard_results for w in written):
        storage.fs.delete_dir(posixpath.join(staging, MEMBERS_DIR))
    return files, pa.concat_tables([RELEASE_INDEX_SCHEMA.empty_table(), *indexes])


def _with_tars(layout: SourceLayout, index: pa.Table, pairs: pa.Table) -> pa.Table:
    """A source's index with each caption pair's ``webdataset_shard``: the ``k``-th pair (in
    source order) lies in tar ``k // tar_rows``; rows without a pair keep a null."""
    if not pairs.num_rows:
        return index
    tar_of = np.full(index.num_rows, -1, dtype=np.int32)
    tar_of[pairs.column("position").to_numpy()] = np.arange(pairs.num_rows) // layout.tar_rows
    names = [tar_name(layout.source, k) for k in range(int(tar_of.max()) + 1)]
    shards = pa.array(names, pa.string()).take(pa.array(tar_of, mask=tar_of < 0))
    column = index.schema.get_field_index("webdataset_shard")
    return index.set_column(column, RELEASE_INDEX_SCHEMA.field(column), shards)
