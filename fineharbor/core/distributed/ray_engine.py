"""The Ray side of :mod:`fineharbor.core.distributed.engine` (imported only when used)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator

import pyarrow as pa
import ray
import ray.data

from fineharbor.core.distributed.engine import (
    BatchWork,
    Unit,
    actor_resources,
    cpu_processes,
    map_batches,
    partition_units,
    read_unit,
    worker_id,
)
from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.storage import Storage
from fineharbor.core.stored import StageRows

log = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema(
    [
        pa.field("rows_in", pa.int64()),
        pa.field("kept", pa.list_(pa.large_binary())),
        pa.field("rejected", pa.list_(pa.large_binary())),
        pa.field("worker", pa.string()),
        pa.field("node", pa.string()),
    ]
)


def connect(execution: ExecutionParams) -> None:
    """Join the configured cluster once per process (``ray.init(address=...)``)."""
    if ray.is_initialized():
        return
    ray.init(
        address=execution.address,
        runtime_env=execution.runtime_env or None,
        ignore_reinit_error=True,
    )


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class StageActor:
    """One actor of a stage's pool: builds the stage once (isolated work: a process pool of
    the actor's CPUs, warm for every unit), then maps units to results."""

    def __init__(self, work: BatchWork, rows: StageRows, batch_size: int, cpus: float) -> None:
        if work.isolated:
            from fineharbor.core.distributed.pool import WorkerPools

            resources = dataclasses.replace(work.resources, processes=cpu_processes(cpus))
            work = dataclasses.replace(work, resources=resources)
            pools = WorkerPools()
            self.run = lambda batches: map_batches("process_pool", work, batches, pools)
        else:
            self.run = work.setup(*work.args)
        self.rows, self.batch_size = rows, batch_size
        self.fs, self.columns = rows.storage.fs, rows.read_columns
        self.worker = worker_id()
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, units: pa.Table) -> pa.Table:
        rows = []
        for unit in units.to_pylist():
            # references to upstream rows resolved here, on the worker (core/stored.py)
            batches = list(
                self.rows.resolve(read_unit(self.fs, Unit(**unit), self.columns, self.batch_size))
            )
            kept, rejected = [], []
            for kept_table, rejected_table in self.run(batches):
                kept.append(_to_ipc(kept_table))
                rejected.append(_to_ipc(rejected_table))
            rows.append(
                {
                    "rows_in": sum(b.num_rows for b in batches),
                    "kept": kept,
                    "rejected": rejected,
                    "worker": self.worker,
                    "node": self.node,
                }
            )
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _check_gpus(requested: float) -> None:
    if requested > 0 and not ray.cluster_resources().get("GPU"):
        # Not an error: an autoscaling cluster (a KubeRay GPU worker group at zero) adds them.
        log.warning(
            "the Ray cluster has no GPU now; model actors ask for %s GPU each and wait for one "
            "(set execution.gpus_per_actor: 0 to run models on CPU)",
            requested,
        )


def ray_map_partition(
    execution: ExecutionParams,
    storage: Storage,
    asset: str,
    partition: str,
    work: BatchWork,
    batch_size: int,
    columns: list[str] | None,
    progress: Callable[[int], None] | None,
    info: dict,
) -> Iterator[tuple[pa.Table, pa.Table]]:
    units = partition_units(storage, asset, partition, execution.batch_rows)
    info["engine"] = "ray"
    if not units:
        return
    connect(execution)
    resources = actor_resources(execution, work)
    if resources.get("num_gpus"):
        _check_gpus(resources["num_gpus"])
    actors = execution.gpu_actors if work.gpu else execution.cpu_actors
    dataset = ray.data.from_items(
        [dataclasses.asdict(u) for u in units], override_num_blocks=len(units)
    ).map_batches(
        StageActor,
        fn_constructor_args=(
            work.without_models(),
            StageRows(storage, asset, partition, columns),
            batch_size,
            resources["num_cpus"],
        ),
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(actors, len(units))),
        **resources,
    )
    dataset.context.execution_options.preserve_order = True  # output in input order
    dataset.context.enable_progress_bars = False
    workers, nodes = set(), set()
    for block in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in block.to_pylist():
            workers.add(row["worker"])
            nodes.add(row["node"])
            for kept, rejected in zip(row["kept"], row["rejected"], strict=True):
                yield _from_ipc(kept), _from_ipc(rejected)
            if progress:
                progress(row["rows_in"])
    info.update(
        ray_units=len(units),
        ray_workers=len(workers),
        ray_nodes=len(nodes),
        ray_worker_ids=", ".join(sorted(workers)),
    )
