"""`fineharbor materialize`: incremental by default, --dry-run, --force, interrupts, empty runs."""

import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from fineharbor.cli import main, materialize_all, print_outcome
from fineharbor.core.config import load_config
from fineharbor.core.pipeline import (
    CLEANED,
    DECONTAMINATED,
    DEDUPLICATED,
    DUPLICATES,
    RAW,
    RELEASE,
    SCORED,
    SIGNATURES,
    UNIFIED,
)
from fineharbor.defs.automation import with_config_versions
from fineharbor.defs.jobs import ASSETS, JOBS
from fineharbor.defs.plan import Step, execute_plan, held_back
from fineharbor_tests.defs.pipeline import resources

GHOST = """  - name: ghost
    reader: image_folder
    location: does_not_exist
    mapping: {caption: txt}
"""
STAGES = [RAW, UNIFIED, CLEANED, SIGNATURES]


@pytest.fixture
def project(ingest_project, monkeypatch):
    """The two-source project of the ingest tests, without its broken source."""
    config = Path(ingest_project.config_path)
    config.write_text(config.read_text().replace(GHOST, ""))
    monkeypatch.setenv("FINEHARBOR_CONFIG", str(config))
    return ingest_project


def definitions(project) -> dg.Definitions:
    """The project's definitions as the code location builds them from its current config."""
    return with_config_versions(
        dg.Definitions(assets=ASSETS, jobs=JOBS, resources=resources(project)),
        lambda: load_config(project.config_path),
        project.config_path,
    )


def snapshot(project) -> dict[str, pa.Table]:
    """Every stage's kept rows and rejects, per partition, in a stable order."""
    storage, tables = project.storage, {}
    for asset in [*STAGES, DEDUPLICATED, DECONTAMINATED, SCORED]:
        for partition in ("charts", "scenes"):
            for kind in ("data", "rejects"):
                if storage.has_partition(asset, partition, kind=kind):
                    table = storage.read_table(asset, partition, kind=kind)
                    tables[f"{asset}/{partition}/{kind}"] = table.sort_by("sample_id")
    for asset in (DUPLICATES, RELEASE):
        tables[asset] = storage.read_table(asset).sort_by("sample_id")
    return tables


def runs(instance) -> int:
    return len(instance.get_runs())


@pytest.mark.slow
def test_materialize_redoes_only_what_changed_and_equals_a_forced_run(project, capsys):
    with dg.instance_for_test() as instance:
        first = materialize_all(definitions=definitions(project), instance=instance)
        assert first.success and not first.failed
        assert {s.job for s in first.done} >= {"per_source_job", "global_job"}

        # Nothing changed: no run at all.
        before = runs(instance)
        assert materialize_all(definitions=definitions(project), instance=instance) is None
        assert runs(instance) == before
        assert "nothing to do" in capsys.readouterr().out

        # One cleaning threshold changes: the dry run lists cleaned_samples of both partitions
        # and what they feed, never the ingest stages, and runs nothing.
        config = Path(project.config_path)
        config.write_text(
            config.read_text().replace("stages:\n", "stages:\n  clean:\n    jpeg_quality: 90\n")
        )
        assert (
            materialize_all(definitions=definitions(project), instance=instance, dry_run=True)
            is None
        )
        assert runs(instance) == before
        plan = capsys.readouterr().out
        assert RAW not in plan and UNIFIED not in plan
        for partition in ("charts", "scenes"):
            assert f"per_source_job {partition}" in plan
        assert "cleaned_samples          config or code changed" in plan
        assert "image_signatures         cleaned_samples re-runs" in plan
        for downstream in (DUPLICATES, DEDUPLICATED, RELEASE):
            assert downstream in plan

        changed = materialize_all(definitions=definitions(project), instance=instance)
        assert changed.success
        redone = {(a, s.partition) for s in changed.done for a in s.assets}
        assert (CLEANED, "charts") in redone and (RELEASE, None) in redone
        assert not {a for a, _ in redone} & {RAW, UNIFIED}
        incremental = snapshot(project)
        assert materialize_all(definitions=definitions(project), instance=instance) is None

        forced = materialize_all(definitions=definitions(project), instance=instance, force=True)
        assert forced.success
        assert {a for s in forced.done for a in s.assets} >= {RAW, RELEASE}
        again = snapshot(project)
        assert again.keys() == incremental.keys()
        for name, table in incremental.items():
            assert again[name].equals(table), name


@pytest.mark.slow  # two pipeline runs (~9 s)
def test_a_changed_source_file_makes_its_raw_samples_stale(project, capsys):
    with dg.instance_for_test() as instance:
        defs = definitions(project)
        instance.add_dynamic_partitions("source", ["scenes"])
        job = defs.resolve_job_def("per_source_job")
        assert job.execute_in_process(partition_key="scenes", instance=instance).success
        materialize_all(["scenes"], definitions=defs, instance=instance, dry_run=True)
        assert "per_source_job scenes" not in capsys.readouterr().out
        records = Path(project.config_path).parent / "scenes" / "data.jsonl"
        records.write_text(records.read_text().replace('"id": "s0"', '"id": "s00"'))
        materialize_all(["scenes"], definitions=defs, instance=instance, dry_run=True)
        plan = capsys.readouterr().out
        assert "raw_samples              source files or source config changed" in plan
        assert "unified_samples          raw_samples re-runs" in plan
        assert "per_source_job charts" not in plan


def test_materialize_accepts_source_as_an_option_and_rejects_unknown_names(project, capsys):
    assert main(["materialize", "--source", "nope", "--dry-run"]) == 2
    assert "no source or partition 'nope'" in capsys.readouterr().err
    assert main(["materialize", "--source", "charts", "scenes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "per_source_job charts" in out and "per_source_job scenes" in out


@pytest.mark.parametrize("text", ["sources: []\n", "name: p\nsources:\n"])
def test_an_empty_project_says_what_is_missing(project, capsys, text):
    Path(project.config_path).write_text(text)
    assert main(["materialize"]) == 2  # a project-file problem, like a bad field
    err = capsys.readouterr().err.strip()
    assert "no sources in" in err and str(project.config_path) in err
    assert len(err.splitlines()) == 1


def test_when_every_partition_fails_the_global_stages_say_why_they_did_not_run(
    ingest_project,
    monkeypatch,
    capsys,
):
    config = Path(ingest_project.config_path)
    monkeypatch.setenv("FINEHARBOR_CONFIG", str(config))
    with dg.instance_for_test() as instance:
        outcome = materialize_all(
            ["ghost"], definitions=definitions(ingest_project), instance=instance
        )
        assert [(s.job, s.partition) for s, _ in outcome.failed] == [("per_source_job", "ghost")]
        held = {s.job: why for s, why in outcome.held_back}
        assert "no partition of cleaned_samples, image_signatures" in held["cross_source_job"]
        assert "per_source_job ghost failed" in held["filter_job"]
        assert print_outcome(outcome) == 1
        err = capsys.readouterr().err
        assert "job per_source_job" in err and "partition ghost" in err
        assert "assets: raw_samples" in err


# --------------------------------------------------------------------------- plan execution


@dg.asset
def slow() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
    time.sleep(5)


@dg.asset
def broken() -> None:
    raise RuntimeError("stage failed")


@dg.asset(deps=[slow, broken])
def after() -> None:
    pass


TINY = dg.Definitions(
    assets=[slow, broken, after],
    jobs=[
        dg.define_asset_job("first_job", [slow, broken]),
        dg.define_asset_job("second_job", [after]),
    ],
)


def test_an_interrupt_stops_every_later_job():
    repository = TINY.get_repository_def()
    steps = [Step("first_job", None, {"slow": "missing"}), Step("second_job", None, {"after": "x"})]
    with dg.instance_for_test() as instance:
        outcome = execute_plan(steps, repository, instance)
        assert outcome.interrupted and not outcome.done
        assert [s.job for s in outcome.not_run] == ["first_job", "second_job"]
        assert not instance.get_runs(filters=dg.RunsFilter(job_name="second_job"))
    assert print_outcome(outcome) == 130


def test_a_failed_stage_holds_back_what_it_feeds():
    repository = TINY.get_repository_def()
    steps = [
        Step("first_job", None, {"broken": "missing"}),
        Step("second_job", None, {"after": "broken re-runs"}),
    ]
    assert held_back(repository.asset_graph, steps, {("broken", None)}) == {("after", None)}
    with dg.instance_for_test() as instance:
        outcome = execute_plan(steps, repository, instance)
    assert [(s.job, assets) for s, assets in outcome.failed] == [("first_job", ["broken"])]
    assert [(s.job, why) for s, why in outcome.held_back] == [("second_job", "first_job failed")]


def test_sigterm_between_jobs_is_an_interrupt():
    from fineharbor.cli import _interrupts_as_keyboard_interrupt

    with _interrupts_as_keyboard_interrupt(), pytest.raises(KeyboardInterrupt):
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        time.sleep(5)


def test_approving_a_source_makes_only_the_release_stale(project):
    config = Path(project.config_path)
    config.write_text(config.read_text().replace("release: {require_review: false}", ""))

    def versions() -> dict[str, str | None]:
        graph = definitions(project).resolve_asset_graph()
        return {k.to_user_string(): graph.get(k).code_version for k in graph.toposorted_asset_keys}

    before = versions()
    assert main(["review", "charts", "--approve", "--by", "tester"]) == 0
    after = versions()
    assert {k for k in before if before[k] != after[k]} == {RELEASE}
    assert main(["review", "charts", "--note", "looked again", "--by", "tester"]) == 0
    assert versions() == after  # a note changes nothing the release reads


@pytest.mark.slow  # two pipeline runs (~6 s)
def test_a_stage_older_than_its_input_is_redone(project, capsys):
    """An interrupted run (or a run of one asset from the UI) redid an input but not what reads
    it: the input's data version may be the same, the reader is still redone."""
    with dg.instance_for_test() as instance:
        defs = definitions(project)
        instance.add_dynamic_partitions("source", ["scenes"])
        job = defs.resolve_job_def("per_source_job")
        assert job.execute_in_process(partition_key="scenes", instance=instance).success
        raw = [dg.AssetKey(RAW)]
        rerun = job.execute_in_process(
            partition_key="scenes", instance=instance, asset_selection=raw
        )
        assert rerun.success
        materialize_all(["scenes"], definitions=defs, instance=instance, dry_run=True)
        plan = capsys.readouterr().out
        assert "unified_samples          raw_samples was materialized after it" in plan
        assert "raw_samples   " not in plan
