import dagster as dg
import duckdb
import pytest

from fineharbor.core.pipeline import CLEANED, RAW, SIGNATURES, UNIFIED
from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.release import RELEASE_ASSETS
from fineharbor.defs.reporting import _combined_check
from fineharbor.defs.sensors import source_sensor
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS
from fineharbor_tests.defs.pipeline import FIRST_PASS_ASSETS, materialize, resources, run_pipeline


@pytest.mark.slow
def test_per_source_stages_conserve_rows_and_report(project):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["charts", "scenes"])
        for partition in ("charts", "scenes"):
            result = materialize(project, instance, partition)
            assert result.success
            checks = result.get_asset_check_evaluations()
            assert len(checks) == 3 * len(FIRST_PASS_ASSETS) and all(c.passed for c in checks)
        storage = project.storage
        assert storage.count_rows(RAW, "charts") == 7
        assert storage.count_rows(UNIFIED, "charts") == 6
        assert storage.count_rows(UNIFIED, "charts", kind="rejects") == 1
        assert storage.count_rows(RAW, "scenes", kind="rejects") == 1
        event = instance.get_latest_materialization_event(dg.AssetKey(UNIFIED))
        metadata = event.asset_materialization.metadata
        assert metadata["dagster/row_count"].value == 4
        assert metadata["rows_in"].value == 4
        assert "Rejects by reason" in metadata["summary"].value
        cleaned = instance.get_latest_materialization_event(dg.AssetKey(CLEANED))
        plots = cleaned.asset_materialization.metadata
        assert (
            "Longest image side" in plots["image_sides"].value and "█" in plots["image_sides"].value
        )
        assert "Text length" in plots["text_lengths"].value
        assert [c.name for c in metadata["dagster/column_schema"].schema.columns][:2] == [
            "sample_id",
            "source",
        ]


@pytest.mark.slow
def test_one_run_materializes_a_range_of_partitions_with_their_own_metadata(project):
    """A backfill run over several partitions (orchestration.partitions_per_run) records one
    materialization per partition with that partition's figures, and each check once, over all
    of them."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["charts", "scenes"])
        result = dg.materialize(
            FIRST_PASS_ASSETS,
            instance=instance,
            resources=resources(project),
            tags={
                "dagster/asset_partition_range_start": "charts",
                "dagster/asset_partition_range_end": "scenes",
            },
        )
        assert result.success
        unified = {
            e.partition: e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey(UNIFIED)
        }
        assert {p: m["dagster/row_count"].value for p, m in unified.items()} == {
            "charts": 6,
            "scenes": 4,
        }
        assert unified["charts"]["rows_rejected"].value == 1
        assert "**unified_samples / scenes**" in unified["scenes"]["summary"].value
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 3 * len(FIRST_PASS_ASSETS) and all(c.passed for c in checks)
        conserved = next(
            c
            for c in checks
            if c.asset_key == dg.AssetKey(UNIFIED) and c.check_name == "rows_conserved"
        )
        assert conserved.metadata["partitions"].value == 2
        assert conserved.metadata["by_partition"].value["charts"] == {
            "rows_in": 7,
            "kept": 6,
            "rejected": 1,
        }
        for asset in (RAW, UNIFIED, CLEANED, SIGNATURES):
            assert project.storage.partitions(asset) == ["charts", "scenes"]


def test_a_failed_partition_fails_the_combined_check():
    ok = dg.AssetCheckResult(check_name="rows_conserved", passed=True, metadata={"kept": 3})
    bad = dg.AssetCheckResult(check_name="rows_conserved", passed=False, metadata={"kept": 1})
    combined = _combined_check("rows_conserved", {"a": ok, "b": bad, "c": ok})
    assert not combined.passed
    assert combined.metadata["failed_partitions"].value == "b"
    assert combined.metadata["by_partition"].value["b"] == {"kept": 1}


@pytest.mark.slow
def test_rematerializing_gives_the_same_rows(project):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["charts"])
        materialize(project, instance, "charts")
        first = project.storage.read_table(UNIFIED, "charts")
        materialize(project, instance, "charts")
        assert project.storage.read_table(UNIFIED, "charts").equals(first)


@pytest.mark.slow
def test_missing_location_fails_only_its_partition(project):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["ghost", "charts"])
        failed = materialize(project, instance, "ghost")
        assert not failed.success
        assert "does_not_exist does not exist" in str(
            failed.get_step_failure_events()[0].event_specific_data.error
        )
        assert materialize(project, instance, "charts").success


@pytest.mark.slow
def test_catalog_exposes_every_stage_and_rejects(project):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["charts", "scenes"])
        run_pipeline(project, instance, ["charts", "scenes"])
        assert dg.materialize(
            [*RELEASE_ASSETS, *SQL_MODEL_ASSETS, duckdb_catalog],
            instance=instance,
            resources=resources(project),
        ).success
    with duckdb.connect(str(project.catalog_path), read_only=True) as connection:
        counts = dict(
            connection.execute("select source, count(*) from unified_samples group by 1").fetchall()
        )
        reasons = connection.execute("select reason from raw_samples_rejects").fetchall()
        funnel = connection.execute(
            "select source, records, rejected_at_ingest, rejected_at_mapping, kept from source_funnel"
        ).fetchall()
        contamination = connection.execute(
            "select samples, samples_flagged from contamination_report where source = '*'"
        ).fetchall()
    assert counts == {"charts": 6, "scenes": 4}
    assert reasons == [("malformed_record",)]
    assert [row[:4] for row in funnel] == [("charts", 7, 0, 1), ("scenes", 5, 1, 0)]
    assert contamination[0][1] == 0 and contamination[0][0] == sum(row[4] for row in funnel)


def test_sensor_adds_partitions_and_requests_runs_for_new_or_changed_sources(project, tmp_path):
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"project": project})
        result = source_sensor(context)
        assert result.dynamic_partitions_requests[0].partition_keys == ["charts", "scenes", "ghost"]
        assert sorted(r.partition_key for r in result.run_requests) == ["charts", "ghost", "scenes"]
        instance.add_dynamic_partitions(source_partitions.name, ["charts", "scenes", "ghost"])
        again = source_sensor(
            dg.build_sensor_context(
                instance=instance, cursor=result.cursor, resources={"project": project}
            )
        )
        assert again.run_requests == [] and again.dynamic_partitions_requests == []
        (tmp_path / "charts" / "more.parquet").write_bytes(
            (tmp_path / "charts" / "train.parquet").read_bytes()
        )
        changed = source_sensor(
            dg.build_sensor_context(
                instance=instance, cursor=result.cursor, resources={"project": project}
            )
        )
        assert [r.partition_key for r in changed.run_requests] == ["charts"]


def test_definitions_load_and_describe_every_asset():
    from fineharbor.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.group_name, key
        assert node.kinds, key
