"""Map a stage's batch work over one upstream partition, in this process or on Ray.

A stage in ``core/`` is a function from Arrow batches to (kept, rejected) tables. Here it is
wrapped as :class:`BatchWork`: ``setup(*args)`` builds the stream function where the work runs
(loading models or starting a worker pool once per process). :func:`map_partition` returns the
(kept, rejected) pairs in input order, so the caller writes them with the one writer it always
uses (atomic publish, rejects, StageReport) whatever the engine.

On Ray the partition is cut into units: slices of ``batch_rows`` rows of the upstream Parquet
row groups, read by the workers themselves from storage (a shared filesystem or object storage
that every node reaches). A Ray Data pipeline over the units runs ``setup``'s function in an
actor pool (``map_batches`` of a class, ``ActorPoolStrategy``, with ``num_gpus`` for model
stages, fractional allowed); results come back in order (``preserve_order``) as Arrow IPC, with
each unit's input row count for progress and the worker that ran it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows

Pairs = Iterable[tuple[pa.Table, pa.Table]]
StreamFn = Callable[[Iterable[pa.RecordBatch]], Pairs]


@dataclass(frozen=True)
class BatchWork:
    """A stage's work on batches.

    ``setup(*args)`` returns the stream function (batches -> (kept, rejected) pairs, in order);
    it runs once per worker, so it is where models load. ``setup`` must be a module-level
    function and ``args`` picklable: on Ray both travel to the workers. ``local``, when given,
    is the ready stream function the local engine uses instead (e.g. with models the Dagster
    resource already loaded in this process, or the process-wide cleaning pool).
    """

    stage: str
    setup: Callable[..., StreamFn]
    args: tuple = ()
    gpu: bool = False
    local: StreamFn | None = None


@dataclass
class MappedPartition:
    """The (kept, rejected) pairs of one partition; after iteration ``info`` says where they
    were computed (empty for the local engine, so its metadata is unchanged)."""

    pairs: Pairs
    info: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[pa.Table, pa.Table]]:
        yield from self.pairs


def counted(
    batches: Iterable[pa.RecordBatch], progress: Callable[[int], None] | None
) -> Iterator[pa.RecordBatch]:
    """The batches, reporting each one's rows to ``progress`` once it has been consumed."""
    for batch in batches:
        yield batch
        if progress:
            progress(batch.num_rows)


def map_partition(
    execution: ExecutionParams,
    storage: Storage,
    asset: str,
    partition: str,
    work: BatchWork,
    *,
    batch_size: int,
    columns: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> MappedPartition:
    """(kept, rejected) pairs of ``work`` over ``asset``'s ``partition``, in input order."""
    if not execution.on_ray(work.stage):
        batches = counted(
            read_stage_rows(storage, asset, partition, columns=columns, batch_size=batch_size),
            progress,
        )
        run = work.local or work.setup(*work.args)
        return MappedPartition(run(batches))
    from fineharbor.core.distributed.ray_engine import ray_map_partition

    info: dict = {}  # filled as the pairs are consumed
    pairs = ray_map_partition(
        execution, storage, asset, partition, work, batch_size, columns, progress, info
    )
    return MappedPartition(pairs, info)


# --------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class Unit:
    """Rows [offset, offset + length) of one row group of one Parquet file."""

    path: str
    row_group: int
    offset: int
    length: int


def partition_units(storage: Storage, asset: str, partition: str, rows: int) -> list[Unit]:
    """The partition cut into slices of at most ``rows`` rows, in file and row order, from the
    Parquet footers only. A missing partition fails as :meth:`Storage.iter_batches` does."""
    files = storage.files(asset, partition)
    if not files and not storage.has_partition(asset, partition):
        next(storage.iter_batches(asset, partition))  # raises the usual "materialize it first"
    units = []
    for path in files:
        metadata = pq.ParquetFile(path, filesystem=storage.fs).metadata
        for group in range(metadata.num_row_groups):
            count = metadata.row_group(group).num_rows
            units += [
                Unit(path, group, start, min(rows, count - start))
                for start in range(0, count, rows)
            ]
    return units


def read_unit(
    storage_fs, unit: Unit, columns: list[str] | None, batch_size: int
) -> list[pa.RecordBatch]:
    """A unit's rows as record batches of at most ``batch_size`` rows."""
    with storage_fs.open_input_file(unit.path) as handle:
        table = pq.ParquetFile(handle).read_row_group(unit.row_group, columns=columns)
    table = table.slice(unit.offset, unit.length).combine_chunks()
    return [
        batch
        for start in range(0, table.num_rows, batch_size)
        for batch in table.slice(start, batch_size).to_batches()
    ]


def cpu_processes(execution: ExecutionParams) -> int:
    """Worker processes a CPU-stage actor may run: its CPU share, at least one."""
    return max(1, math.floor(execution.cpus_per_actor))


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
