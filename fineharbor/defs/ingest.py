"""Per-source stages as assets: each reads its upstream partition, calls core, writes, reports."""

import os
import time
from collections.abc import Callable, Sequence

import dagster as dg
from tqdm import tqdm

from fineharbor.core import stages
from fineharbor.core.config import ProjectConfig
from fineharbor.core.readers import source_state
from fineharbor.core.stages import StageReport
from fineharbor.core.storage import Storage
from fineharbor.defs.partitions import per_source_backfill_policy, source_partitions
from fineharbor.defs.reporting import (
    StageCheck,
    cleaned_distributions,
    column_schema,
    markdown_table,
    partitions_result,
    stage_check_specs,
)
from fineharbor.defs.resources import EmbedderResource, FineharborProject
from fineharbor.defs.review import review_page_metadata, source_config

PROGRESS_ENV = "FINEHARBOR_PROGRESS"
SOURCE_STATE = "source_state"
"""Metadata key of `raw_samples`: the source's config fingerprint and files' signature as read."""

StageBuilder = Callable[[ProjectConfig, str, Storage, Callable[[int], None]], StageReport]


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
    plots: Callable[[Storage, StageReport], dict] | None = None,
    checks: Sequence[StageCheck] = (),
    review_page: bool = False,
    record_source_state: bool = False,
) -> dg.AssetsDefinition:
    """A partitioned asset around a core stage function, with the blocking data checks.

    The stage runs with the source's reviewed overrides applied; `review_page` regenerates the
    source's HTML review page after the stage and links it in the metadata; `record_source_state`
    records the state of the source's files as read (`fineharbor materialize` compares it with
    the current one to tell that a source changed)."""

    @dg.asset(
        name=name,
        partitions_def=source_partitions,
        backfill_policy=per_source_backfill_policy,
        group_name=group,
        kinds=set(kinds),
        deps=list(deps),
        pool=pool,
        check_specs=[*stage_check_specs(name), *(c.spec(name) for c in checks)],
        code_version=code_version,
        description=description,
    )
    def _stage(context: dg.AssetExecutionContext, project: FineharborProject):
        outcomes = []
        for partition in context.partition_keys:
            progress = ProgressLog(context.log, f"{name} {partition}")
            config = source_config(project, partition)
            state = source_state(config.source(partition)) if record_source_state else None
            report = builder(config, partition, project.storage, progress)
            if state is not None:
                report.extra[SOURCE_STATE] = state
            if plots is not None:
                report.extra.update(plots(project.storage, report))
            if review_page:
                report.extra.update(review_page_metadata(project, partition))
            outcomes.append((report, [check.result(config, report) for check in checks]))
        return partitions_result(context, project.storage, outcomes)

    return _stage


raw_samples = per_source_stage(
    "raw_samples",
    stages.build_raw_samples,
    group="ingest",
    record_source_state=True,
    description=(
        "Each source's records as read: original fields kept as JSON in `record`, referenced "
        "images fetched into `images` (local files, tar members, or HTTP downloads for URL "
        "lists, img2dataset-style with SSRF protection and X-Robots-Tag noai honoured), with "
        "provenance (`origin_uri`, `origin_key`). Unreadable records and failed fetches go to "
        "the rejects ledger. Downloads are kept under `downloads/` and reused on re-runs; a "
        "re-run that would turn published images into download failures is not published."
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
    plots=cleaned_distributions,
    review_page=True,
)


@dg.asset(
    partitions_def=source_partitions,
    backfill_policy=per_source_backfill_policy,
    group_name="dedup",
    kinds={"parquet", "pytorch"},
    deps=[cleaned_samples],
    pool="gpu",
    check_specs=stage_check_specs("image_signatures"),
    code_version="1",
    description=(
        "Per image of the cleaned samples: sha256 of the bytes and of the decoded pixels (a "
        "lossless re-encode still matches), a 64-bit perceptual hash and that of the mirror "
        "image, a copy-detection embedding (SSCD TorchScript, 320x320, ImageNet norm, "
        "L2-normalised, as FineVision) and a CLIP image embedding (open_clip), float16. The "
        "GPU op: embedders load once per process, batch, and use CUDA + half precision."
    ),
)
def image_signatures(
    context: dg.AssetExecutionContext, project: FineharborProject, embedder: EmbedderResource
):
    embedders = embedder.embedders(project.config.stages.signatures)
    outcomes = []
    for partition in context.partition_keys:
        report = stages.build_image_signatures(
            project.config,
            partition,
            project.storage,
            ProgressLog(context.log, f"image_signatures {partition}"),
            embedders=embedders,
        )
        report.extra["images_per_second"] = round(report.rows_per_second, 1)
        # an absent model leaves its column null (logged with how to get it): say which ran
        report.extra["embeddings"] = ", ".join(e.name for e in embedders) or "none (hashes only)"
        outcomes.append((report, []))
    return partitions_result(context, project.storage, outcomes)


def _global_result(table, stats: dict, summary: str) -> dg.MaterializeResult:
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


@dg.asset(
    group_name="dedup",
    kinds={"parquet", "python"},
    deps=[image_signatures, cleaned_samples],
    code_version="1",
    description=(
        "Cross-source duplicate groups over every train source: exact (pixel sha256), near "
        "(perceptual-hash Hamming, copy-detection / CLIP cosine with faiss), LAION's URL + "
        "caption, and text-only (normalised hash, MinHash LSH). Pairs are union-found into "
        "clusters (DanQing); the member kept is chosen by source priority, then resolution, then "
        "quality, ties by sample_id. Metadata: duplicates per source pair, cluster sizes and "
        "FineVision's diversity score."
    ),
)
def duplicate_clusters(project: FineharborProject) -> dg.MaterializeResult:
    clusters, stats = stages.build_duplicate_clusters(project.config, project.storage)
    rows = clusters.select(["source", "cluster_id", "cluster_size", "is_kept"]).to_pylist()
    source_of = {r["cluster_id"]: r["source"] for r in rows if r["is_kept"]}
    pairs: dict[tuple[str, str], int] = {}
    for row in rows:
        if not row["is_kept"]:
            pair = (row["source"], source_of[row["cluster_id"]])
            pairs[pair] = pairs.get(pair, 0) + 1
    sizes: dict[int, int] = {}
    for row in rows:
        if row["is_kept"]:
            sizes[row["cluster_size"]] = sizes.get(row["cluster_size"], 0) + 1
    summary = (
        f"{len(source_of)} clusters, {clusters.num_rows - len(source_of)} duplicates dropped\n\n"
        "### Duplicates per source pair (dropped from, kept in)\n"
        + markdown_table(
            ["dropped from", "kept in", "samples"], [(*k, v) for k, v in sorted(pairs.items())]
        )
        + "\n\n### Cluster sizes\n"
        + markdown_table(["size", "clusters"], sorted(sizes.items()))
    )
    return _global_result(clusters, stats, summary)


deduplicated_samples = per_source_stage(
    "deduplicated_samples",
    stages.build_deduplicated_samples,
    group="dedup",
    deps=[cleaned_samples, duplicate_clusters],
    description=(
        "Cleaned samples minus the non-kept members of duplicate clusters. Each reject "
        "(`exact_duplicate` / `near_duplicate`) names the kept sample (`duplicate_of`), the "
        "signature type (`signal`) and the similarity. Benchmark sources pass unchanged."
    ),
)


@dg.asset(
    group_name="decontam",
    kinds={"parquet", "python"},
    deps=[image_signatures, cleaned_samples],
    code_version="1",
    description=(
        "Every benchmark source's (role: benchmark) image signatures - the same copy-detection "
        "and perceptual hashes as dedup - and its questions' word 13-grams, plus benchmark "
        "embeddings imported from Parquet (e.g. FineVision's published lmms-eval embeddings), "
        "checked to come from the same embedder."
    ),
)
def benchmark_index(project: FineharborProject) -> dg.MaterializeResult:
    index, stats = stages.build_benchmark_index(project.config, project.storage)
    summary = (
        f"benchmarks: {', '.join(stats['benchmarks']) or 'none'}; embedder {stats['embedder']}"
    )
    return _global_result(index, stats, summary)


def _contamination_within_limit(config: ProjectConfig, report: StageReport) -> tuple[bool, dict]:
    limit = config.stages.decontam.max_contamination_rate
    if config.source(report.partition).role == "benchmark":
        return True, {"role": "benchmark", "max_contamination_rate": limit}
    flagged = report.reasons.get("benchmark_match", 0)
    rate = flagged / report.rows_in if report.rows_in else 0.0
    return rate <= limit, {
        "samples_flagged": flagged,
        "samples": report.rows_in,
        "sample_rate": round(rate, 5),
        "max_contamination_rate": limit,
    }


CONTAMINATION_RATE = StageCheck(
    "contamination_rate_within_limit",
    "share of the partition's samples matching a benchmark is at most "
    "stages.decontam.max_contamination_rate (not blocking: the matches are already removed, "
    "but a high rate says the source was built from test data)",
    _contamination_within_limit,
)

decontaminated_samples = per_source_stage(
    "decontaminated_samples",
    stages.build_decontaminated_samples,
    group="decontam",
    deps=[deduplicated_samples, benchmark_index, image_signatures],
    description=(
        "Deduplicated samples minus those matching a benchmark (FineVision): any image within "
        "cosine >= 0.95 of a benchmark image (copy-detection embedding), or a close perceptual "
        "hash, or any turn sharing a word 13-gram with a benchmark question. Each "
        "`benchmark_match` reject names the benchmark, the matched sample, the signal and the "
        "similarity. A benchmark source's own samples are rejected as `benchmark_source`."
    ),
    checks=[CONTAMINATION_RATE],
    review_page=True,
)

FIRST_PASS_ASSETS = [raw_samples, unified_samples, cleaned_samples, image_signatures]
CROSS_SOURCE_ASSETS = [duplicate_clusters, benchmark_index]
SECOND_PASS_ASSETS = [deduplicated_samples, decontaminated_samples]
PER_SOURCE_ASSETS = [*FIRST_PASS_ASSETS, *SECOND_PASS_ASSETS]
