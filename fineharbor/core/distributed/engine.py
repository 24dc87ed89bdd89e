"""Map a stage's batch work over one upstream partition: in this process, in a pool of worker
processes, or on Ray. One interface, three engines.

A stage in ``core/`` is a function from Arrow batches to (kept, rejected) tables. Here it is
wrapped as :class:`BatchWork`: ``setup(*args)`` runs once per worker (loading models) and returns
the stream function that processes batches; the work declares what a worker needs
(:class:`Resources`: CPUs, GPU share, processes, time limits). :func:`map_partition` picks the
engine from the project file's ``execution:`` section and returns the (kept, rejected) pairs in
input order, so the caller writes them with the one writer it always uses (atomic publish,
rejects, StageReport) whatever the engine:

- ``in_process``: ``setup`` runs here, with the models a Dagster resource already loaded
  (``models``), and the batches stream through it;
- ``process_pool`` (:mod:`.pool`): worker processes, one row at a time, with crash and
  time-limit isolation: a row that kills its worker or overruns its limit is rejected with a
  reason, the rest go on. Work that declares ``isolated`` (cleaning: untrusted image decoders)
  runs here by default;
- ``ray`` (:mod:`.ray_engine`): the partition is cut into units: slices of ``batch_rows`` rows
  of the upstream Parquet row groups, read by the workers themselves from storage (a shared
  filesystem or object storage that every node reaches). A Ray Data pipeline over the units runs
  ``setup``'s function in an actor pool (``map_batches`` of a class, ``ActorPoolStrategy``, with
  ``num_gpus`` for model stages, fractional allowed); isolated work runs in a process pool inside
  each actor. Results come back in order (``preserve_order``) as Arrow IPC, with each unit's
  input row count for progress and the worker that ran it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows

if TYPE_CHECKING:
    from fineharbor.core.distributed.pool import WorkerPools

Pairs = Iterable[tuple[pa.Table, pa.Table]]
StreamFn = Callable[[Iterable[pa.RecordBatch]], Pairs]


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs.

    ``cpus`` / ``gpus``: a Ray actor's CPUs and GPU share (None: ``execution``'s
    ``cpus_per_actor`` / ``cpus_per_gpu_actor`` and ``gpus_per_actor`` for GPU work, 0 GPU
    otherwise). The rest applies to the process-pool engine: ``processes`` workers (0: one per
    CPU core; on Ray, the actor's CPUs), each row under ``time_limit_s`` and each sub-item a
    stage marks (:func:`fineharbor.core.distributed.pool.watch`) under ``item_time_limit_s``
    (None: no limit); ``start_method`` of the worker processes. ``reports_rows``: the stage
    calls :meth:`~fineharbor.core.distributed.pool.Watch.row_start` for each row it starts, so
    the pool hands it runs of rows, not one row per call (same results and blame, without a
    table per row).
    """

    cpus: float | None = None
    gpus: float | None = None
    processes: int = 0
    time_limit_s: float | None = None
    item_time_limit_s: float | None = None
    start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
    reports_rows: bool = False


@dataclass(frozen=True)
class Failure:
    """Why a process-pool worker lost a row: ``timeout`` (killed past ``limit_s``) or
    ``crash`` (``how``: the signal or exit code); ``item``: the sub-item it was on, or -1."""

    kind: Literal["timeout", "crash"]
    row: int
    item: int
    limit_s: float
    how: str


Blame = Callable[[Failure, dict], tuple[str, str]]
"""(failure, the row as a dict) -> (reason, detail) of that row's reject."""


@dataclass(frozen=True)
class BatchWork:
    """A stage's work on batches.

    ``setup(*args)`` returns the stream function (batches -> (kept, rejected) pairs, one per
    batch, in order); it runs once per worker, so it is where models load. ``setup`` must be a
    module-level function and ``args`` picklable: worker processes and Ray actors receive both.
    ``models``: keyword arguments the in-process engine adds to ``setup``'s call (models a Dagster
    resource already loaded in this process); other engines' workers load their own.
    ``isolated``: rows run in worker processes by default (the process-pool engine here, a pool
    inside each actor on Ray). ``blame``: the reject reason of a row that crashed or stalled a
    worker (module-level; default ``worker_crashed`` / ``worker_timeout``).
    """

    stage: str
    setup: Callable[..., StreamFn]
    args: tuple = ()
    gpu: bool = False
    resources: Resources = Resources()
    isolated: bool = False
    blame: Blame | None = None
    models: Mapping[str, Any] | None = field(default=None, compare=False)

    def without_models(self) -> BatchWork:
        """The work as it travels to other processes."""
        return dataclasses.replace(self, models=None)


@dataclass
class MappedPartition:
    """The (kept, rejected) pairs of one partition; after iteration ``info`` says where they
    were computed (empty for the local engines, so their metadata is unchanged)."""

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


def map_batches(
    engine: str,
    work: BatchWork,
    batches: Iterable[pa.RecordBatch],
    pools: WorkerPools | None = None,
) -> Pairs:
    """``work`` over ``batches`` with a local engine (``in_process`` or ``process_pool``)."""
    if engine == "process_pool":
        from fineharbor.core.distributed.pool import map_in_pool

        return map_in_pool(work, batches, pools)
    return work.setup(*work.args, **(work.models or {}))(batches)


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
    pools: WorkerPools | None = None,
) -> MappedPartition:
    """(kept, rejected) pairs of ``work`` over ``asset``'s ``partition``, in input order.

    ``pools``: warm process pools to reuse (owned by the caller); without it the process-pool
    engine starts a pool for this partition."""
    engine = execution.engine_for(work.stage, work.isolated)
    if engine != "ray":
        batches = counted(
            read_stage_rows(storage, asset, partition, columns=columns, batch_size=batch_size),
            progress,
        )
        return MappedPartition(map_batches(engine, work, batches, pools))
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


def actor_resources(execution: ExecutionParams, work: BatchWork) -> dict[str, float]:
    """A Ray actor's ``num_cpus`` and ``num_gpus`` for ``work``."""
    declared = work.resources
    if work.gpu:
        cpus, gpus = execution.cpus_per_gpu_actor, execution.gpus_per_actor
    else:
        cpus, gpus = execution.cpus_per_actor, 0.0
    cpus = declared.cpus if declared.cpus is not None else cpus
    gpus = declared.gpus if declared.gpus is not None else gpus
    return {"num_cpus": cpus, "num_gpus": gpus} if gpus else {"num_cpus": cpus}


def cpu_processes(cpus: float) -> int:
    """Worker processes an actor with ``cpus`` CPUs may run, at least one."""
    return max(1, math.floor(cpus))


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
