"""Decontamination: the benchmark index over every benchmark source, and each source minus the
samples that match a benchmark."""

import dagster as dg

from fineharbor.core.config import ProjectConfig
from fineharbor.core.decontam.build import build_benchmark_index
from fineharbor.core.pipeline import BENCHMARK_INDEX, DECONTAMINATED
from fineharbor.core.stage_io import StageReport
from fineharbor.defs.factory import global_result, global_stage, per_source_stage
from fineharbor.defs.reporting import StageCheck
from fineharbor.defs.resources import FineharborProject


@global_stage(BENCHMARK_INDEX)
def benchmark_index(project: FineharborProject) -> dg.MaterializeResult:
    index, stats = build_benchmark_index(project.config, project.storage)
    summary = (
        f"benchmarks: {', '.join(stats['benchmarks']) or 'none'}; embedder {stats['embedder']}"
    )
    return global_result(index, stats, summary)


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
    DECONTAMINATED, checks=[CONTAMINATION_RATE], review_page=True
)
