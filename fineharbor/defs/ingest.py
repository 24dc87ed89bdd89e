"""Ingest stage: each source read as it is (`raw_samples`), then mapped (`unified_samples`)."""

import time

import dagster as dg

from fineharbor.core import stages
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.reporting import stage_check_specs, stage_result
from fineharbor.defs.resources import FineharborProject


class ProgressLog:
    """Logs progress of long work at most every few seconds, so the run log stays readable."""

    def __init__(self, log: dg.DagsterLogManager, what: str, every_s: float = 5.0) -> None:
        self.log, self.what, self.every_s = log, what, every_s
        self.done, self.started, self.last = 0, time.monotonic(), 0.0

    def __call__(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            self.log.info(f"{self.what}: {self.done} rows ({rate:.0f} rows/s)")


@dg.asset(
    partitions_def=source_partitions,
    group_name="ingest",
    kinds={"parquet", "python"},
    check_specs=stage_check_specs("raw_samples"),
    code_version="1",
    description=(
        "Each source's records as read: original fields kept as JSON in `record`, referenced "
        "images fetched into `images` (local files, tar members, or HTTP downloads for URL "
        "lists, img2dataset-style with SSRF protection and X-Robots-Tag noai honoured), with "
        "provenance (`origin_uri`, `origin_key`). Unreadable records and failed fetches go to "
        "the rejects ledger."
    ),
)
def raw_samples(
    context: dg.AssetExecutionContext, project: FineharborProject
) -> dg.MaterializeResult:
    report = stages.build_raw_samples(
        project.config,
        context.partition_key,
        project.storage,
        ProgressLog(context.log, f"reading {context.partition_key}"),
    )
    return stage_result(report, project.storage)


@dg.asset(
    partitions_def=source_partitions,
    group_name="ingest",
    kinds={"parquet", "python"},
    deps=[raw_samples],
    check_specs=stage_check_specs("unified_samples"),
    code_version="1",
    description=(
        "Records mapped into the unified, FineVision-compatible schema (`images`, `texts` as "
        "user/assistant turns, `source`) by the source's declared mapping (presets finevision/"
        "cauldron, llava, laion, webdataset_caption, or field paths). Unmappable records are "
        "rejected with a reason."
    ),
)
def unified_samples(
    context: dg.AssetExecutionContext, project: FineharborProject
) -> dg.MaterializeResult:
    report = stages.build_unified_samples(
        project.config,
        context.partition_key,
        project.storage,
        ProgressLog(context.log, f"mapping {context.partition_key}"),
    )
    return stage_result(report, project.storage)


PER_SOURCE_ASSETS = [raw_samples, unified_samples]
