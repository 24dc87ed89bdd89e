"""Per-source stages as assets: each reads its upstream partition, calls core, writes, reports."""

import time
from collections.abc import Callable, Sequence

import dagster as dg

from fineharbor.core import stages
from fineharbor.core.config import ProjectConfig
from fineharbor.core.stages import StageReport
from fineharbor.core.storage import Storage
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.reporting import stage_check_specs, stage_result
from fineharbor.defs.resources import FineharborProject

StageBuilder = Callable[[ProjectConfig, str, Storage, Callable[[int], None]], StageReport]


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


def per_source_stage(
    name: str,
    builder: StageBuilder,
    *,
    group: str,
    description: str,
    deps: Sequence[dg.AssetsDefinition] = (),
    kinds: frozenset[str] = frozenset({"parquet", "python"}),
    pool: str | None = None,
    code_version: str = "1",
) -> dg.AssetsDefinition:
    """A partitioned asset around a core stage function, with the blocking data checks."""

    @dg.asset(
        name=name,
        partitions_def=source_partitions,
        group_name=group,
        kinds=set(kinds),
        deps=list(deps),
        pool=pool,
        check_specs=stage_check_specs(name),
        code_version=code_version,
        description=description,
    )
    def _stage(context: dg.AssetExecutionContext, project: FineharborProject):
        progress = ProgressLog(context.log, f"{name} {context.partition_key}")
        report = builder(project.config, context.partition_key, project.storage, progress)
        return stage_result(report, project.storage)

    return _stage


raw_samples = per_source_stage(
    "raw_samples",
    stages.build_raw_samples,
    group="ingest",
    description=(
        "Each source's records as read: original fields kept as JSON in `record`, referenced "
        "images fetched into `images` (local files, tar members, or HTTP downloads for URL "
        "lists, img2dataset-style with SSRF protection and X-Robots-Tag noai honoured), with "
        "provenance (`origin_uri`, `origin_key`). Unreadable records and failed fetches go to "
        "the rejects ledger."
    ),
)

unified_samples = per_source_stage(
    "unified_samples",
    stages.build_unified_samples,
    group="ingest",
    deps=[raw_samples],
    description=(
        "Records mapped into the unified, FineVision-compatible schema (`images`, `texts` as "
        "user/assistant turns, `source`) by the source's declared mapping (presets finevision/"
        "cauldron, llava, laion, webdataset_caption, or field paths). Unmappable records are "
        "rejected with a reason."
    ),
)

cleaned_samples = per_source_stage(
    "cleaned_samples",
    stages.build_cleaned_samples,
    group="clean",
    deps=[unified_samples],
    description=(
        "Unified samples after FineVision, LAION and DanQing cleaning: every image fully decoded "
        "in worker processes (format allowlist, pixel limit before decoding, per-image time "
        "limit), EXIF-oriented and converted to RGB, longest side resized to 2048; LAION's "
        "5 KB / 5-character rules; min side, aspect ratio, blur and entropy; per-turn 8192-token "
        "cap, language allowlist (lingua), DanQing's 5-60 words, repetition, special characters, "
        "[UNK] junk and safety terms; domain trust; GUI actions normalised to one action space. "
        "Each reject names its rule, the measured value and the threshold."
    ),
)


PER_SOURCE_ASSETS = [raw_samples, unified_samples, cleaned_samples]
