"""Stale-partition automation.

Each stage's code version carries a hash of the parameters it reads from `fineharbor.yaml` (the
release's also what reviewers decided in `reviews.yaml`), so
after the code location reloads a changed config, Dagster's data-version machinery marks exactly
the partitions whose stage config, code version or inputs changed as stale (the UI shows it on
every asset). `stale_partitions_schedule` re-materializes those, and only those: it walks the
pipeline's jobs in order and requests the first job that has stale or missing work: for a
per-source job, one run per few consecutive partitions with the same stale assets (only those
assets and what they feed within the job), for a global job one run. Later jobs wait for a later
tick, when their inputs are fresh; a tick with runs of this schedule still in flight requests
nothing.
"""

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from fineharbor.core.config import ConfigError, ProjectConfig, default_config_path, load_config
from fineharbor.core.pipeline import RELEASE, stage_params
from fineharbor.defs.dagster_internals import (
    IN_PROGRESS_RUN_STATUSES,
    CachingStaleStatusResolver,
    StaleStatus,
    stale_status_resolver,
)
from fineharbor.defs.jobs import PIPELINE
from fineharbor.defs.partitions import per_source_backfill_policy, source_partitions

# The `stages.*` sections of the project file that each stage reads (core/pipeline.py).
STAGE_PARAMS: dict[str, tuple[str, ...]] = stage_params()

SCHEDULE_NAME = "stale_partitions_schedule"


def params_hash(config: ProjectConfig, sections: Sequence[str]) -> str:
    # sections live under `stages:`, but for the release recipe, which is top-level
    dumped = "\n".join(
        (config.release if s == "release" else getattr(config.stages, s)).model_dump_json()
        for s in sections
    )
    return hashlib.sha256(dumped.encode()).hexdigest()[:10]


def reviews_hash(config: ProjectConfig, config_path: str | Path | None = None) -> str:
    """What the release takes from `reviews.yaml`: the train sources that may enter and their
    flagged samples. Approving a source makes the release stale; a note does not."""
    from fineharbor.core.review.decisions import load_reviews, reviews_path
    from fineharbor.core.review.gate import project_gate

    log = load_reviews(reviews_path(config_path or default_config_path()), config)
    state = {name: sorted(log.state(name).flagged) for name in project_gate(log, config).allowed}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:10]


def with_config_versions(
    defs: dg.Definitions,
    config_loader: Callable[[], ProjectConfig] = load_config,
    config_path: str | Path | None = None,
) -> dg.Definitions:
    """The definitions with `<code version>+<params hash>` as code version of every stage that
    reads parameters, and the review state (``reviews_hash``) in the release's when the recipe
    requires reviews. An invalid project file leaves the versions as they are, an invalid
    reviews file the release's (the source sensor and every run report the error).
    ``config_path``: the project file beside which `reviews.yaml` is (default: the one
    `load_config` reads)."""
    try:
        config = config_loader()
    except ConfigError:
        return defs
    try:
        reviewed = reviews_hash(config, config_path) if config.release.require_review else ""
    except ConfigError:  # the release run reports the reviews file's error
        reviewed = ""

    def versioned(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        sections = STAGE_PARAMS.get(name)
        if not sections:
            return spec
        code_version = f"{spec.code_version or '1'}+{params_hash(config, sections)}"
        if name == RELEASE and reviewed:
            code_version += f"+reviews-{reviewed}"
        return spec.replace_attributes(code_version=code_version)

    with warnings.catch_warnings():  # stable in practice; "preview" in Dagster's terms
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return defs.map_asset_specs(func=versioned)


def _stale_keys(
    resolver: CachingStaleStatusResolver,
    graph,
    keys: Sequence[dg.AssetKey],
    partition: str | None,
) -> list[dg.AssetKey]:
    """The stale or missing keys and, within ``keys``, everything downstream of them."""
    stale = {
        key
        for key in keys
        if resolver.get_status(key, partition) in (StaleStatus.STALE, StaleStatus.MISSING)
    }
    frontier = list(stale)
    while frontier:
        for child in graph.get(frontier.pop()).child_keys:
            if child in keys and child not in stale:
                stale.add(child)
                frontier.append(child)
    return [key for key in keys if key in stale]


RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def _partition_groups(
    stale_by_partition: list[tuple[str, list[dg.AssetKey]]], per_run: int
) -> list[tuple[list[str], list[dg.AssetKey]]]:
    """Consecutive partitions (in the partitions definition's order) with the same stale assets,
    at most ``per_run`` to a group: one run each, as a backfill of the per-source stages runs
    them. A fresh partition between two stale ones ends a group: a run's range is contiguous."""
    groups: list[tuple[list[str], list[dg.AssetKey]]] = []
    for partition, stale in stale_by_partition:
        if groups and groups[-1][1] == stale and len(groups[-1][0]) < per_run:
            groups[-1][0].append(partition)
        else:
            groups.append(([partition], stale))
    return groups


def _run_request(
    partitions: list[str] | None, stale: list[dg.AssetKey], job_name: str
) -> dg.RunRequest:
    tags = {"fineharbor/trigger": "stale", "fineharbor/job": job_name}
    if partitions and len(partitions) > 1:
        tags |= {RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[-1]}
        return dg.RunRequest(asset_selection=stale, tags=tags)
    return dg.RunRequest(
        partition_key=partitions[0] if partitions else None, asset_selection=stale, tags=tags
    )


def stale_run_requests(
    instance: dg.DagsterInstance, repository: dg.RepositoryDefinition
) -> list[dg.RunRequest]:
    """Runs for the first job of the pipeline that has stale or missing partitions: for a
    per-source job, one run per few consecutive partitions with the same stale assets
    (`orchestration.partitions_per_run`); for a global job, one run."""
    graph = repository.asset_graph
    resolver = stale_status_resolver(instance, graph)
    partitions = instance.get_dynamic_partitions(source_partitions.name)
    per_run = per_source_backfill_policy.max_partitions_per_run or 1
    for job_name, per_partition in PIPELINE:
        keys = sorted(repository.get_job(job_name).asset_layer.executable_asset_keys)
        if not per_partition:
            stale = _stale_keys(resolver, graph, keys, None)
            if stale:
                return [_run_request(None, stale, job_name)]
            continue
        found = [(p, _stale_keys(resolver, graph, keys, p)) for p in partitions]
        runs = [
            _run_request(group, stale, job_name)
            for group, stale in _partition_groups(found, per_run)
            if stale
        ]
        if runs:
            return runs
    return []


@dg.schedule(
    name=SCHEDULE_NAME,
    cron_schedule="0 * * * *",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        "Hourly: re-materializes stale partitions only - a partition is stale when its stage's "
        "parameters (part of the code version), its code version or its inputs' data versions "
        "changed, or it was never materialized. Per-source stages get one run per few "
        "consecutive stale partitions (orchestration.partitions_per_run); global stages run "
        "once, on a later tick, after them."
    ),
)
def stale_partitions_schedule(context: dg.ScheduleEvaluationContext):
    in_flight = context.instance.get_runs_count(
        dg.RunsFilter(
            statuses=IN_PROGRESS_RUN_STATUSES, tags={"dagster/schedule_name": SCHEDULE_NAME}
        )
    )
    if in_flight:
        return dg.SkipReason(f"{in_flight} run(s) of the previous tick still in flight")
    requests = stale_run_requests(context.instance, context.repository_def)
    return requests or dg.SkipReason("every partition is fresh")
