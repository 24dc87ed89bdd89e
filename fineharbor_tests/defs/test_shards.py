"""A sharded source: one partition per shard, each reading every n-th file, with the same
samples (ids, `source` column) as the unsharded source, through the cross-source stages and
the release."""

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from fineharbor.core.catalog import connect_in_memory
from fineharbor.core.config import Shard, load_config
from fineharbor.core.pipeline import RAW, RELEASE, SCORED
from fineharbor.core.readers import SourceLocationError, read_source
from fineharbor.core.stored import read_stage_table
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.release import RELEASE_ASSETS
from fineharbor.defs.resources import STAGE_TABLES, FineharborProject
from fineharbor_tests.defs.pipeline import resources, run_pipeline

SHARDS = ["charts.shard-000", "charts.shard-001"]


def split_charts(project, files: int) -> None:
    """The charts source as ``files`` Parquet files instead of one."""
    directory = Path(project.config_path).parent / "charts"
    table = pq.read_table(directory / "train.parquet")
    (directory / "train.parquet").unlink()
    step = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), directory / f"part-{i}.parquet")


def shard_charts(project, shards: int) -> None:
    config = Path(project.config_path)
    text = config.read_text().replace(
        "mapping: {preset: cauldron}", f"mapping: {{preset: cauldron}}\n    shards: {shards}"
    )
    config.write_text(text)


def ids(storage, asset: str, partitions: list[str]) -> set[str]:
    return {
        sample_id
        for p in partitions
        for sample_id in storage.read_table(asset, p, columns=["sample_id"]).column(0).to_pylist()
    }


def test_config_names_shard_partitions_and_resolves_them(project):
    shard_charts(project, 2)
    config = load_config(project.config_path)
    assert config.partition_keys == [*SHARDS, "scenes", "ghost"]
    assert config.source("charts.shard-001").name == "charts"
    assert config.shard("charts.shard-001") == Shard(1, 2) and config.shard("scenes") is None
    with pytest.raises(KeyError, match=r"charts\.shard-002"):
        config.source("charts.shard-002")
    with pytest.raises(KeyError):
        config.source("scenes.shard-000")


def test_shards_partition_the_records_and_refuse_more_shards_than_files(project):
    split_charts(project, 3)
    config = load_config(project.config_path)
    source = config.source("charts")

    def keys(shard):
        return [
            key
            for kept, rejected in read_source(source, config.stages.ingest, shard=shard)
            for key in [
                *kept.column("origin_key").to_pylist(),
                *rejected.column("origin_key").to_pylist(),
            ]
        ]

    whole, first, second = keys(None), keys(Shard(0, 2)), keys(Shard(1, 2))
    assert sorted(first + second) == sorted(whole) and not set(first) & set(second)
    assert {k.split(":")[0] for k in second} == {"part-1.parquet"}  # every 2nd file from 1
    with pytest.raises(SourceLocationError, match="cannot be split into 4 shards"):
        keys(Shard(0, 4))


@pytest.mark.slow
def test_a_sharded_source_gives_the_unsharded_samples_through_the_release(project, tmp_path):
    split_charts(project, 3)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["charts", "scenes"])
        run_pipeline(project, instance, ["charts", "scenes"])
        whole = ids(project.storage, SCORED, ["charts"])

    shard_charts(project, 2)
    sharded = FineharborProject(config_path=project.config_path, home=str(tmp_path / "sharded"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, [*SHARDS, "scenes"])
        run_pipeline(sharded, instance, [*SHARDS, "scenes"])
        storage = sharded.storage
        assert storage.partitions(RAW) == [*SHARDS, "scenes"]
        assert ids(storage, SCORED, SHARDS) == whole
        sources = {
            s
            for p in SHARDS
            for s in read_stage_table(storage, SCORED, p).column("source").to_pylist()
        }
        assert sources == {"charts"}
        with connect_in_memory(storage, STAGE_TABLES) as connection:
            by_source = connection.execute(
                "select source, count(*) from scored_samples group by source order by source"
            ).fetchall()
        assert by_source == [("charts", len(whole)), ("scenes", 4)]
        result = dg.materialize(RELEASE_ASSETS, instance=instance, resources=resources(sharded))
        assert result.success
        released = storage.read_table(RELEASE)
        charts = {r["sample_id"] for r in released.to_pylist() if r["source"] == "charts"}
        assert charts and charts <= whole
        assert all(c.passed for c in result.get_asset_check_evaluations())
