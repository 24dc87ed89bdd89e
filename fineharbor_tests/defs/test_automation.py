from pathlib import Path

import dagster as dg
import pytest

from fineharbor.cli import stage_status
from fineharbor.core.config import load_config
from fineharbor.core.pipeline import (
    BENCHMARK_INDEX,
    CLEANED,
    DECONTAMINATED,
    DEDUPLICATED,
    DUPLICATES,
    RAW,
    SIGNATURES,
    UNIFIED,
)
from fineharbor.defs.automation import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    _partition_groups,
    stale_partitions_schedule,
    stale_run_requests,
    with_config_versions,
)
from fineharbor.defs.jobs import ASSETS, JOBS, PIPELINE
from fineharbor.defs.partitions import source_partitions
from fineharbor_tests.defs.pipeline import resources

PARTITIONS = ["charts", "scenes"]
BOTH = "charts..scenes"


def repository(project) -> dg.RepositoryDefinition:
    """The project's definitions as the code location builds them from its current config."""
    defs = dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        schedules=[stale_partitions_schedule],
        resources=resources(project),
    )
    return with_config_versions(defs, lambda: load_config(project.config_path)).get_repository_def()


def change_cleaning_threshold(project) -> None:
    config = Path(project.config_path)
    config.write_text(
        config.read_text().replace("stages:\n", "stages:\n  clean:\n    jpeg_quality: 90\n")
    )


def requested(requests: list[dg.RunRequest]) -> list[tuple[str | None, list[str]]]:
    """(partition or "first..last" range, assets) of each request."""

    def partitions(r: dg.RunRequest) -> str | None:
        if RANGE_START_TAG in r.tags:
            return f"{r.tags[RANGE_START_TAG]}..{r.tags[RANGE_END_TAG]}"
        return r.partition_key

    return sorted(
        (partitions(r), sorted(k.to_user_string() for k in r.asset_selection)) for r in requests
    )


def run(repo: dg.RepositoryDefinition, instance, requests: list[dg.RunRequest]) -> None:
    for request in requests:
        job = repo.get_job(request.tags["fineharbor/job"])
        result = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            asset_selection=request.asset_selection,
            tags={k: v for k, v in request.tags.items() if k.startswith("dagster/")},
        )
        assert result.success


@pytest.mark.slow
def test_only_partitions_of_the_stage_whose_config_changed_are_requested(project):
    first_pass = [CLEANED, SIGNATURES, RAW, UNIFIED]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, PARTITIONS)
        repo = repository(project)
        # Nothing materialized: the first job of the pipeline, every partition, every asset.
        # Consecutive partitions share a run (orchestration.partitions_per_run).
        requests = stale_run_requests(instance, repo)
        assert requested(requests) == [(BOTH, first_pass)]
        for job_name, per_partition in PIPELINE:
            for partition in PARTITIONS if per_partition else [None]:
                result = repo.get_job(job_name).execute_in_process(
                    instance=instance, partition_key=partition
                )
                assert result.success
        assert stale_run_requests(instance, repo) == []
        with dg.build_schedule_context(instance=instance, repository_def=repo) as context:
            assert isinstance(stale_partitions_schedule(context), dg.SkipReason)

        # A cleaning threshold changes: cleaned_samples and what it feeds in its job, for every
        # partition; ingest stages stay fresh and are not requested.
        change_cleaning_threshold(project)
        repo = repository(project)
        requests = stale_run_requests(instance, repo)
        assert requested(requests) == [(BOTH, [CLEANED, SIGNATURES])]
        with dg.build_schedule_context(instance=instance, repository_def=repo) as context:
            assert requested(stale_partitions_schedule(context)) == requested(requests)

        # Once those ran, the global stage fed by them is next, once, then the second pass.
        run(repo, instance, requests)
        requests = stale_run_requests(instance, repo)
        assert requested(requests) == [(None, [BENCHMARK_INDEX, DUPLICATES])]
        run(repo, instance, requests)
        requests = stale_run_requests(instance, repo)
        assert requested(requests) == [(BOTH, [DECONTAMINATED, DEDUPLICATED])]


@pytest.mark.slow
def test_status_has_a_line_per_stage_with_rows_rejects_and_freshness(project):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, PARTITIONS)
        repo = repository(project)
        for partition in PARTITIONS:
            assert (
                repo.get_job("per_source_job")
                .execute_in_process(instance=instance, partition_key=partition)
                .success
            )
        columns, rows = stage_status(instance, repo.asset_graph, project.storage)
        by_stage = {row[0]: dict(zip(columns, row, strict=True)) for row in rows}
        assert set(by_stage) == {
            k.to_user_string() for k in repo.asset_graph.materializable_asset_keys
        }
        raw = by_stage[RAW]
        assert (raw["partitions"], raw["rows"], raw["rejects"]) == ("2/2", 11, 1)
        assert raw["materialized"].endswith("s ago") and raw["freshness"] == "fresh"
        assert by_stage[DEDUPLICATED]["materialized"] == "never"
        assert by_stage[DEDUPLICATED]["freshness"] == "2 missing"
        assert by_stage[DUPLICATES]["freshness"] == "1 missing"

        change_cleaning_threshold(project)
        repo = repository(project)
        _, rows = stage_status(instance, repo.asset_graph, project.storage)
        freshness = {row[0]: row[-1] for row in rows}
        assert freshness[CLEANED] == "2 stale"
        assert freshness[UNIFIED] == "fresh"


def test_stale_partitions_group_into_contiguous_runs_of_at_most_per_run():
    a, b = [dg.AssetKey("x")], [dg.AssetKey("x"), dg.AssetKey("y")]
    found = [("p1", a), ("p2", a), ("p3", a), ("p4", []), ("p5", a), ("p6", b), ("p7", b)]
    groups = [(names, stale) for names, stale in _partition_groups(found, 2) if stale]
    assert groups == [(["p1", "p2"], a), (["p3"], a), (["p5"], a), (["p6", "p7"], b)]
