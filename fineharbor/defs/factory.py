"""The two asset factories: a stage of the table (`core/pipeline.py`) becomes a Dagster asset.

Everything the asset graph shows (name, group, kinds, pool, upstream, code version,
description, partitions) comes from the stage's declaration; the domain modules
(`defs/ingest.py`, `cleaning.py`, `dedup.py`, `decontam.py`, `quality.py`, `release.py`) add
only what differs: a stage's own checks, metadata, and models loaded once per run.
"""

import os
import time
from collections.abc import Callable, Iterable, Sequence

import dagster as dg
from tqdm import tqdm

from fineharbor.core.config import ProjectConfig
from fineharbor.core.pipeline import Stage, resolve, stage
from fineharbor.core.readers import source_state
from fineharbor.core.stage_io import StageReport
from fineharbor.core.storage import Storage
from fineharbor.defs.partitions import per_source_backfill_policy, source_partitions
from fineharbor.defs.reporting import (
    StageCheck,
    column_schema,
    partitions_result,
    stage_check_specs,
)
from fineharbor.defs.resources import FineharborProject
from fineharbor.defs.review import review_page_metadata, source_config

PROGRESS_ENV = "FINEHARBOR_PROGRESS"
SOURCE_STATE = "source_state"
"""Metadata key of `raw_samples`: the source's config fingerprint and files' signature as read."""

StageRun = Callable[[ProjectConfig, str, Storage, Callable[[int], None]], StageReport]
"""One partition of a per-source stage: (config, source, storage, progress) -> report."""
Setup = Callable[[dg.AssetExecutionContext, FineharborProject], StageRun]
"""What a run does once, before its partitions (load models), returning how to run one."""


class ProgressLog:
    """Logs progress of long work at most every few seconds, so the run log stays readable, and
    draws a progress bar on the terminal when the CLI asks for one (FINEHARBOR_PROGRESS=1)."""

    def __init__(self, log: dg.DagsterLogManager, what: str, every_s: float = 5.0) -> None:
        self.log, self.what, self.every_s = log, what, every_s
        self.done, self.started, self.last = 0, time.monotonic(), 0.0
        self.bar = tqdm(
            desc=what, unit=" rows", leave=False, disable=os.environ.get(PROGRESS_ENV) != "1"
        )

    def __call__(self, rows: int) -> None:
        self.bar.update(rows)
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            self.log.info(f"{self.what}: {self.done} rows ({rate:.0f} rows/s)")


# Under dagster-k8s's k8s_job_executor each step is a pod: a `gpu`-pool step's pod asks for one
# GPU. Executors that run steps in one process or container ignore the tag.
K8S_GPU_STEP = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
    }
}


def _declared(spec: Stage) -> dict:
    """The `dg.asset` arguments the stage table fixes."""
    return {
        "op_tags": K8S_GPU_STEP if spec.pool == "gpu" else None,
        "name": spec.name,
        "group_name": spec.group,
        "kinds": set(spec.kinds),
        "deps": [dg.AssetKey(name) for name in spec.upstream],
        "pool": spec.pool,
        "code_version": spec.code_version,
        "description": spec.description,
    }


def _build(spec: Stage) -> Setup:
    return lambda context, project: resolve(spec.build)


def per_source_stage(
    name: str,
    *,
    setup: Setup | None = None,
    resources: Iterable[str] = (),
    reviewed: bool = True,
    plots: Callable[[Storage, StageReport], dict] | None = None,
    checks: Sequence[StageCheck] = (),
    review_page: bool = False,
    record_source_state: bool = False,
) -> dg.AssetsDefinition:
    """A source-partitioned asset around a per-source stage's build, with the blocking data
    checks (`stage_check_specs`) and ``checks``.

    ``setup`` runs once per run before the partitions (default: the stage's build function);
    ``resources``: the resource keys it uses beside `project`. ``reviewed``: each partition
    runs with its source's reviewed overrides applied (else with the project's config).
    ``review_page`` regenerates the source's HTML review page after the stage and links it in
    the metadata; ``record_source_state`` records the state of the source's files as read
    (`fineharbor materialize` compares it with the current one to tell that a source changed).
    """
    spec = stage(name)
    assert spec.per_source, f"{name} is a global stage"
    prepare = setup or _build(spec)

    @dg.asset(
        **_declared(spec),
        partitions_def=source_partitions,
        backfill_policy=per_source_backfill_policy,
        required_resource_keys={"project", *resources},
        check_specs=[*stage_check_specs(name), *(c.spec(name) for c in checks)],
    )
    def _stage(context: dg.AssetExecutionContext):
        project: FineharborProject = context.resources.project
        run = prepare(context, project)
        outcomes = []
        for partition in context.partition_keys:
            progress = ProgressLog(context.log, f"{name} {partition}")
            config = source_config(project, partition) if reviewed else project.config
            state = source_state(config.source(partition)) if record_source_state else None
            report = run(config, partition, project.storage, progress)
            if state is not None:
                report.extra[SOURCE_STATE] = state
            if plots is not None:
                report.extra.update(plots(project.storage, report))
            if review_page:
                report.extra.update(review_page_metadata(project, partition))
            outcomes.append((report, [check.result(config, report) for check in checks]))
        return partitions_result(context, project.storage, outcomes)

    return _stage


def global_stage(
    name: str, check_specs: Sequence[dg.AssetCheckSpec] = ()
) -> Callable[[Callable], dg.AssetsDefinition]:
    """The `dg.asset` decorator of a global stage (one asset over every source): its body
    builds the stage and says what the materialization shows; resources as its parameters."""
    spec = stage(name)
    assert not spec.per_source, f"{name} is a per-source stage"
    return dg.asset(**_declared(spec), check_specs=list(check_specs) or None)


def global_result(table, stats: dict, summary: str) -> dg.MaterializeResult:
    """A global stage's materialization: its table's size and schema, its stats, a summary."""
    metadata = {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "summary": dg.MetadataValue.md(summary),
    }
    for key, value in stats.items():
        metadata[key] = (
            value
            if isinstance(value, int | float | str)
            else dg.MetadataValue.json(value if isinstance(value, list | dict) else value.__dict__)
        )
    return dg.MaterializeResult(metadata=metadata)
