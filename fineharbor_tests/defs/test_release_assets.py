from pathlib import Path

import dagster as dg
import duckdb
import pytest

from fineharbor.core.pipeline import CONCEPTS, RELEASE
from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.release import RELEASE_ASSETS
from fineharbor.defs.resources import FineharborProject
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS
from fineharbor_tests.defs.pipeline import resources, run_pipeline

RELEASE_RECIPE = """
release:
  name: tiny
  version: "2"
  sources: [{name: charts, cap: 4}, {name: scenes}]
  balancing: {enabled: true, target_size: 6}
  shard_rows: 3
  max_samples: 100
  require_review: false  # the review gate has its own test (test_review.py)
"""
CONCEPTS_CONFIG = """stages:
  concepts:
    n_iters: 10
    levels: [{n_clusters: 4}, {n_clusters: 2}]
"""


@pytest.fixture
def project(ingest_project, tmp_path):
    config = tmp_path / "fineharbor.yaml"
    default = "release: {require_review: false}"
    text = config.read_text().replace(default, "").replace("stages:\n", CONCEPTS_CONFIG)
    config.write_text(text + RELEASE_RECIPE)
    return ingest_project


@pytest.mark.slow
def test_release_assets_write_the_release_models_and_checks(project):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["charts", "scenes"])
        run_pipeline(project, instance, ["charts", "scenes"])
        result = dg.materialize(
            [*RELEASE_ASSETS, *SQL_MODEL_ASSETS, duckdb_catalog],
            instance=instance,
            resources=resources(project),
        )
        assert result.success
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["release_size_within_limits"] and checks["rows_conserved"]
        assert checks["release_holds_no_rejected_or_benchmark_sample"]
        event = instance.get_latest_materialization_event(dg.AssetKey(RELEASE))
        metadata = event.asset_materialization.metadata
        assert metadata["dagster/row_count"].value == 6
        assert metadata["task_engine"].value == "local" and metadata["tasks"].value >= 1
        assert (
            metadata["concept_max_median_ratio_after"].value
            <= metadata["concept_max_median_ratio_before"].value
        )
        concepts = instance.get_latest_materialization_event(dg.AssetKey(CONCEPTS))
        assert concepts.asset_materialization.metadata["embedding"].value == "phash"

        # a release below its configured minimum size fails its blocking check
        config = Path(project.config_path)
        config.write_text(config.read_text().replace("max_samples: 100", "min_samples: 50"))
        strict = FineharborProject(config_path=project.config_path, home=project.home)
        failed = dg.materialize(
            RELEASE_ASSETS, instance=instance, resources=resources(strict), raise_on_error=False
        )
        checks = {c.check_name: c.passed for c in failed.get_asset_check_evaluations()}
        assert checks["release_size_within_limits"] is False
    root = project.storage.path("releases", "tiny", "2")
    with duckdb.connect(str(project.catalog_path), read_only=True) as connection:
        composition = connection.execute(
            "select source, samples from release_composition order by source = '*', source"
        ).fetchall()
        shards = connection.execute(
            f"select count(*) from read_parquet('{root}/data/*/*.parquet')"
        ).fetchall()[0][0]
        matrix = connection.execute("select count(*) from duplicate_matrix").fetchall()
    assert composition[-1] == ("*", 6) and shards == 6
    assert matrix[0][0] >= 0


def test_a_new_project_ends_well_before_any_review_and_an_emptied_release_names_its_filter(
    tmp_path, home, monkeypatch, capsys
):
    from fineharbor.cli import print_review_status
    from fineharbor.core.storage import Storage
    from fineharbor.testing.release_input import SOURCES, write_input

    write_input(Storage(str(home)))
    config = tmp_path / "fineharbor.yaml"
    config.write_text(SOURCES)  # require_review: true, nothing reviewed yet
    monkeypatch.setenv("FINEHARBOR_CONFIG", str(config))
    new = FineharborProject(config_path=str(config), home=str(home))
    with dg.instance_for_test() as instance:
        result = dg.materialize(RELEASE_ASSETS, instance=instance, resources=resources(new))
        assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
        event = instance.get_latest_materialization_event(dg.AssetKey(RELEASE))
        metadata = event.asset_materialization.metadata
        assert metadata["written"].value is False
        assert set(metadata["awaiting_review"].value) == {"pairs", "chats"}
        assert not new.storage.exists(new.storage.path("releases"))
        print_review_status()
        out = capsys.readouterr().out
        assert "fineharbor review pairs --approve" in out and "review chats" in out

        # Without the review gate, a cap of 0 empties the release: the failed check says so.
        config.write_text(
            SOURCES + "release: {require_review: false, sources: [{name: pairs, cap: 0}]}\n"
        )
        capped = FineharborProject(config_path=str(config), home=str(home))
        failed = dg.materialize(
            RELEASE_ASSETS, instance=instance, resources=resources(capped), raise_on_error=False
        )
        size = next(
            c
            for c in failed.get_asset_check_evaluations()
            if c.check_name == "release_size_within_limits"
        )
        assert not size.passed
        assert "source_cap: 40 (release.sources[].cap)" in size.description
        assert "source_not_in_recipe: 20 (release.sources)" in size.description
