"""What `fineharbor materialize` runs: the stale or missing asset partitions, and what they feed.

Dagster knows, per asset partition, whether it was never materialized (missing) or whether its
code version (which carries a hash of the stage's config, see `automation.py`) or a direct
input's data version changed since (stale). It does not follow staleness further down the graph,
does not see an input redone with the same data version (a stage's data version is a hash of its
code version and its inputs', so `raw_samples` re-read from changed files keeps its version), and
does not watch source files. The plan adds all three: an asset partition older than one of its
inputs is redone; `raw_samples` records the state of the
source's files (`source_state`) in its metadata, and a changed state makes it stale; every asset
partition fed by a planned one is planned too, across the global stages (a planned
`image_signatures` partition plans `duplicate_clusters`, which plans every materialized
`deduplicated_samples` partition, and so on). The plan is grouped into the pipeline's jobs, in
order, so the CLI runs each job once per partition with only the planned assets selected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from fineharbor.core.pipeline import RAW, RELEASE
from fineharbor.defs.dagster_internals import (
    StaleCauseCategory,
    StaleStatus,
    stale_status_resolver,
)
from fineharbor.defs.factory import SOURCE_STATE
from fineharbor.defs.jobs import PIPELINE

FIRST_STAGE = dg.AssetKey(RAW)


@dataclass
class Step:
    """One run: a job over one partition (None for a global job), with the assets it redoes and
    why each one is planned."""

    job: str
    partition: str | None
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def assets(self) -> list[str]:
        return list(self.reasons)

    @property
    def label(self) -> str:
        return f"{self.job} {self.partition}" if self.partition else self.job


def _latest_source_state(instance: dg.DagsterInstance, partition: str) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FIRST_STAGE, asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(SOURCE_STATE)
    return None if value is None else str(value.value)


class _LatestMaterializations:
    """The storage id of each asset partition's latest materialization (None: never), one query
    per asset, kept for the plan."""

    def __init__(self, instance: dg.DagsterInstance, graph) -> None:
        self.instance, self.graph = instance, graph
        self.by_key: dict[dg.AssetKey, dict[str | None, int]] = {}

    def of(self, key: dg.AssetKey) -> dict[str | None, int]:
        if key not in self.by_key:
            if self.graph.get(key).is_partitioned:
                found = self.instance.event_log_storage.get_latest_storage_id_by_partition(
                    key, dg.DagsterEventType.ASSET_MATERIALIZATION
                )
                self.by_key[key] = dict(found)
            else:
                records = self.instance.fetch_materializations(key, limit=1).records
                self.by_key[key] = {None: records[0].storage_id} if records else {}
        return self.by_key[key]

    def newer_input(self, key: dg.AssetKey, partition: str | None) -> str | None:
        """An input materialized after this asset partition was (an interrupted run redid the
        input but not this; a run from the UI redid only the input): its name, else None.
        Dagster's data versions miss it when the input's data version stayed the same."""
        own = self.of(key).get(partition)
        if own is None:
            return None
        for parent in sorted(self.graph.get(key).parent_keys):
            if parent not in self.graph.materializable_asset_keys:
                continue
            latest = self.of(parent)
            if self.graph.get(parent).is_partitioned and partition is not None:
                newest = latest.get(partition)
            else:
                newest = max(latest.values(), default=None)
            if newest is not None and newest > own:
                return parent.to_user_string()
        return None


def _own_reason(resolver, key: dg.AssetKey, partition: str | None) -> str | None:
    """Why Dagster considers this asset partition out of date, or None when it is fresh."""
    status = resolver.get_status(key, partition)
    if status == StaleStatus.MISSING:
        return "missing"
    if status != StaleStatus.STALE:
        return None
    reasons = []
    for cause in resolver.get_stale_causes(key, partition):
        if cause.category == StaleCauseCategory.CODE:
            # the code version carries the stage's config (and the release's, the reviews)
            reasons.append(
                "config, reviews or code changed"
                if key.to_user_string() == RELEASE
                else "config or code changed"
            )
        elif cause.dependency is not None:
            dependency = cause.dependency.asset_key.to_user_string()
            if cause.dependency.partition_key and cause.dependency.partition_key != partition:
                dependency += f"[{cause.dependency.partition_key}]"
            reasons.append(f"{dependency} changed")
        else:
            reasons.append(cause.reason)
    return ", ".join(dict.fromkeys(reasons)) or "stale"


def build_plan(
    instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
    partitions: Sequence[str],
    selected: Sequence[str],
    *,
    force: bool = False,
    source_states: Mapping[str, str] | None = None,
    reread: Mapping[str, str] | None = None,
) -> list[Step]:
    """The runs that bring the ``selected`` partitions and the global stages up to date, in
    pipeline order (``partitions``: every configured partition key). Per-source assets of
    other partitions are planned only when a global stage they read is planned and they were
    materialized before, so the release never mixes old and new duplicate clusters. ``force``
    plans every asset of the selected partitions and every global asset. ``source_states`` maps
    a partition to the current state of its source (`core.readers.source_state`); a partition
    whose state differs from the one its last `raw_samples` recorded is stale from there;
    ``reread`` maps partitions whose `raw_samples` is redone anyway to why (`--refetch`)."""
    graph = repository.asset_graph
    resolver = stale_status_resolver(instance, graph)
    latest = _LatestMaterializations(instance, graph)
    known = set(instance.get_dynamic_partitions("source"))
    wanted = set(selected)
    planned: dict[tuple[dg.AssetKey, str | None], str] = {}

    def own_reason(key: dg.AssetKey, partition: str | None) -> str | None:
        if force:
            return "forced"
        if key == FIRST_STAGE and partition in (reread or {}):
            return reread[partition]
        if partition is not None and partition not in known:
            return "missing (new partition)"
        reason = _own_reason(resolver, key, partition)
        if reason is None:
            newer = latest.newer_input(key, partition)
            reason = f"{newer} was materialized after it" if newer else None
        if reason is None and key == FIRST_STAGE and partition in (source_states or {}):
            recorded = _latest_source_state(instance, partition)
            if recorded is not None and recorded != source_states[partition]:
                reason = "source files or source config changed"
        return reason

    for key in graph.toposorted_asset_keys:
        if key not in graph.materializable_asset_keys:
            continue
        for partition in partitions if graph.get(key).is_partitioned else [None]:
            ours = partition is None or partition in wanted
            reason = (own_reason(key, partition) if ours else None) or _upstream_reason(
                graph, planned, key, partition
            )
            if (
                reason
                and not ours
                and (partition not in known or _own_reason(resolver, key, partition) == "missing")
            ):
                reason = None  # another source's partition, never materialized: not ours to start
            if reason:
                planned[(key, partition)] = reason

    steps = []
    for job_name, per_partition in PIPELINE:
        in_job = repository.get_job(job_name).asset_layer.executable_asset_keys
        keys = [k for k in graph.toposorted_asset_keys if k in in_job]
        for partition in partitions if per_partition else [None]:
            step = Step(job_name, partition)
            for key in keys:
                if (key, partition) in planned:
                    step.reasons[key.to_user_string()] = planned[(key, partition)]
            if step.reasons:
                steps.append(step)
    return steps


def _upstream_reason(
    graph, planned: Mapping[tuple[dg.AssetKey, str | None], str], key: dg.AssetKey, partition
) -> str | None:
    """ "<input> re-runs" when an input this asset partition reads is planned."""
    for parent in sorted(graph.get(key).parent_keys):
        if graph.get(parent).is_partitioned:
            hit = any(k == parent and partition in (None, p) for k, p in planned)
        else:
            hit = (parent, None) in planned
        if hit:
            return f"{parent.to_user_string()} re-runs"
    return None


def held_back(
    graph, steps: Sequence[Step], failed: set[tuple[str, str | None]]
) -> set[tuple[str, str | None]]:
    """The planned (asset, partition) pairs that read, directly or not, a failed one. A failed
    partition holds back what it feeds in that partition, not the global stages (they read
    the others, and that partition's previous output if any); a failed global stage holds back
    everything downstream of it."""
    plan = {(asset, step.partition) for step in steps for asset in step.assets}
    blocked: set[tuple[str, str | None]] = set()
    frontier = list(failed)
    while frontier:
        asset, partition = frontier.pop()
        for child in graph.get(dg.AssetKey(asset)).child_keys:
            name = child.to_user_string()
            for planned_asset, target in plan:
                if planned_asset != name or (name, target) in blocked:
                    continue
                if partition is None or target == partition:
                    blocked.add((name, target))
                    frontier.append((name, target))
    return blocked


INTERRUPTED = "DagsterExecutionInterruptedError"


@dataclass
class Outcome:
    """What a plan's execution did: steps done, failed (with the assets that failed), held back
    (an input failed, or nothing upstream was ever materialized: with the reason), and whether
    an interrupt (Ctrl-C, SIGTERM) stopped it, leaving ``not_run``."""

    done: list[Step] = field(default_factory=list)
    failed: list[tuple[Step, list[str]]] = field(default_factory=list)
    held_back: list[tuple[Step, str]] = field(default_factory=list)
    not_run: list[Step] = field(default_factory=list)
    interrupted: bool = False

    @property
    def success(self) -> bool:
        return not (self.failed or self.held_back or self.interrupted)


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Dagster turns SIGINT and SIGTERM inside a run into a failed step and run; this tells that
    failure apart from a stage's own."""
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None and error.cls_name == INTERRUPTED:
            return True
    return False


def _never_materialized_inputs(instance: dg.DagsterInstance, graph, step: Step) -> list[str]:
    """Per-source inputs of a global step of which no partition was ever materialized: the
    stage would have nothing to read (every source failed before it, or none is configured)."""
    empty = []
    for asset in step.assets:
        for parent in sorted(graph.get(dg.AssetKey(asset)).parent_keys):
            if graph.get(parent).is_partitioned and not instance.get_materialized_partitions(
                parent
            ):
                empty.append(parent.to_user_string())
    return list(dict.fromkeys(empty))


def execute_plan(
    steps: Sequence[Step],
    repository: dg.RepositoryDefinition,
    instance: dg.DagsterInstance,
    *,
    run_config: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
    on_step: Callable[[Step, str, float], None] = lambda step, status, seconds: None,
) -> Outcome:
    """Run the plan's steps in order, each as one in-process run of its job with only its
    planned assets selected. What a failed step's assets feed is held back; an interrupt stops
    everything (no later job runs on a half-updated state). ``on_step(step, status, seconds)``
    reports each step as it ends."""
    graph = repository.asset_graph
    outcome = Outcome()
    blocked: dict[tuple[str, str | None], str] = {}

    def hold_back(step: Step, why: str) -> None:
        outcome.held_back.append((step, why))
        on_step(step, f"skipped: {why}", 0.0)

    for index, planned in enumerate(steps):
        held = {
            a: blocked[(a, planned.partition)]
            for a in planned.assets
            if (a, planned.partition) in blocked
        }
        if held:
            hold_back(
                Step(planned.job, planned.partition, {a: planned.reasons[a] for a in held}),
                next(iter(held.values())),
            )
        step = Step(
            planned.job,
            planned.partition,
            {a: r for a, r in planned.reasons.items() if a not in held},
        )
        if not step.reasons:
            continue
        empty = _never_materialized_inputs(instance, graph, step) if step.partition is None else []
        if empty:
            why = f"no partition of {', '.join(empty)} was ever materialized"
            hold_back(step, why)
            for pair in held_back(graph, steps, {(a, None) for a in step.assets}):
                blocked.setdefault(pair, why)
            continue
        started = time.perf_counter()
        try:
            result = repository.get_job(step.job).execute_in_process(
                partition_key=step.partition,
                asset_selection=[dg.AssetKey(a) for a in step.assets],
                instance=instance,
                raise_on_error=False,
                run_config=dict(run_config or {}),
                tags=dict(tags or {}),
            )
            outcome.interrupted = _interrupted(result)
        except KeyboardInterrupt:  # outside the window where Dagster turns it into a failure
            outcome.interrupted = True
        seconds = time.perf_counter() - started
        if outcome.interrupted:
            outcome.not_run = [step, *steps[index + 1 :]]
            on_step(step, "INTERRUPTED", seconds)
            return outcome
        if result.success:
            outcome.done.append(step)
            on_step(step, "ok", seconds)
            continue
        succeeded = {e.step_key for e in result.get_step_success_events()}
        failed = [a for a in step.assets if a not in succeeded]
        outcome.failed.append((step, failed))
        for pair in held_back(graph, steps, {(a, step.partition) for a in failed}):
            blocked.setdefault(pair, f"{step.label} failed")
        on_step(step, "FAILED", seconds)
    return outcome
