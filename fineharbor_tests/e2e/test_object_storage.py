"""The pipeline with FINEHARBOR_HOME=s3://bucket/prefix against an S3-compatible server (moto on
loopback): the same rows as a local run, the files in the bucket, local state kept local."""

import dagster as dg
import pytest

from fineharbor.core.catalog import connect
from fineharbor.core.pipeline import CLEANED, DECONTAMINATED, RAW, RELEASE, SCORED, UNIFIED
from fineharbor.core.storage import COMMIT_MARKER, DATA, REJECTS
from fineharbor.defs.catalog import duckdb_catalog
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.release import RELEASE_ASSETS
from fineharbor.defs.resources import STAGE_TABLES, FineharborProject
from fineharbor.defs.sql_models import SQL_MODEL_ASSETS
from fineharbor_tests.conftest import s3_keys
from fineharbor_tests.defs.pipeline import resources, run_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PARTITIONS = ["charts", "scenes"]
# One SQL model is enough to show SQL models run over s3:// (each takes seconds on moto).
(FUNNEL,) = [a for a in SQL_MODEL_ASSETS if a.key.path[-1] == "source_funnel"]


def contents(storage) -> dict:
    """Every stage's output: sorted sample ids (or the row count) per partition and kind."""
    found = {}
    for stage in STAGE_TABLES:
        for kind in (DATA, REJECTS):
            partitions = storage.partitions(stage.asset, kind) if stage.partitioned else [None]
            for partition in partitions:
                if not storage.has_partition(stage.asset, partition, kind):
                    continue
                table = storage.read_table(stage.asset, partition, kind=kind)
                found[stage.asset, kind, partition] = (
                    sorted(table.column("sample_id").to_pylist())
                    if "sample_id" in table.column_names
                    else table.num_rows
                )
    return found


def test_pipeline_on_s3_gives_the_rows_of_a_local_run(project, s3_bucket, tmp_path):
    bucket, client = s3_bucket
    on_s3 = FineharborProject(
        config_path=project.config_path, home=f"s3://{bucket}/fh", state=str(tmp_path / "state")
    )
    for each in (project, on_s3):
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(source_partitions.name, PARTITIONS)
            run_pipeline(each, instance, PARTITIONS)
            if each is on_s3:  # local release, SQL models and catalog: test_ingest_assets
                assert dg.materialize(
                    [*RELEASE_ASSETS, FUNNEL, duckdb_catalog],
                    instance=instance,
                    resources=resources(on_s3),
                ).success

    local, remote = contents(project.storage), contents(on_s3.storage)
    assert {k: v for k, v in remote.items() if k in local} == local
    assert local[(UNIFIED, DATA, "charts")] and local[(UNIFIED, DATA, "scenes")]
    assert (RELEASE, DATA, None) in remote

    keys = s3_keys(client, bucket, "fh/")
    for asset in (RAW, CLEANED, DECONTAMINATED, SCORED):
        for partition in PARTITIONS:
            directory = f"fh/data/{asset}/source={partition}"
            assert f"{directory}/part-00000.parquet" in keys
            assert f"{directory}/{COMMIT_MARKER}" in keys
    assert "fh/data/duplicate_clusters/part-00000.parquet" in keys
    assert any(k.startswith("fh/releases/") and k.endswith("/manifest.json") for k in keys)
    assert any(k.startswith("fh/data/source_funnel/") for k in keys)  # a SQL model's table
    assert not [k for k in keys if k.startswith("fh/_staging/")]
    assert {"fh/review/charts.html", "fh/review/index.html"} <= set(keys)

    # Process-local state stays local: the catalog file of views (over s3:// globs) is there.
    assert on_s3.catalog_path == tmp_path / "state" / "catalog.duckdb"
    with connect(on_s3.storage, str(on_s3.catalog_path)) as connection:
        counts = dict(
            connection.execute("select source, count(*) from unified_samples group by 1").fetchall()
        )
        funnel = connection.execute("select source, kept from source_funnel").fetchall()
    assert counts == {p: len(local[(UNIFIED, DATA, p)]) for p in PARTITIONS}
    assert sorted(funnel) == sorted(counts.items())
