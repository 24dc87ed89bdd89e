"""End to end: `fineharbor demo` on a small scale, through a persistent Dagster instance."""

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from fineharbor import cli
from fineharbor.core.config import load_config
from fineharbor.core.storage import Storage

REPO = Path(__file__).resolve().parents[1]
INGEST_DEFECTS = {
    "malformed_record": "malformed_record",
    "missing_image": "image_missing",
    "broken_url": "download_http_error",
    "noai_url": "download_noai",
}


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo_home")
    patch = pytest.MonkeyPatch()
    patch.setenv("FINEHARBOR_HOME", str(home))
    patch.setenv("DAGSTER_HOME", str(home / "dagster"))
    patch.setenv("FINEHARBOR_CONFIG", str(REPO / "fineharbor.yaml"))
    assert cli.main(["demo", "--scale", "0.3"]) == 0
    first_ids = ids(home)
    assert cli.main(["demo", "--scale", "0.3"]) == 0
    yield home, first_ids
    patch.undo()


def ids(home: Path) -> set[str]:
    with duckdb.connect() as connection:
        rows = connection.execute(
            f"select sample_id from read_parquet('{home}/data/unified_samples/*/*.parquet')"
        ).fetchall()
    return {r[0] for r in rows}


def test_every_source_reaches_the_catalog(demo_home):
    home, _ = demo_home
    config = load_config(REPO / "fineharbor.yaml")
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as connection:
        sources = {
            r[0]
            for r in connection.execute("select distinct source from unified_samples").fetchall()
        }
    assert sources == set(config.source_names)
    assert len(config.sources) >= 6


def test_every_partition_conserves_rows(demo_home):
    home, _ = demo_home
    storage = Storage(str(home))
    for source in storage.partitions("raw_samples"):
        raw = storage.count_rows("raw_samples", source)
        assert raw == storage.count_rows("unified_samples", source) + storage.count_rows(
            "unified_samples", source, kind="rejects"
        )
        assert raw + storage.count_rows("raw_samples", source, kind="rejects") > 0


def test_second_run_gives_the_same_sample_ids(demo_home):
    home, first_ids = demo_home
    assert ids(home) == first_ids


def test_ground_truth_origin_keys_reach_unified_rows_or_named_rejects(demo_home):
    home, _ = demo_home
    truth = pq.read_table(home / "demo" / "ground_truth.parquet").to_pylist()
    with duckdb.connect() as connection:
        unified = set(
            connection.execute(
                f"select source, origin_key from read_parquet('{home}/data/unified_samples/*/*.parquet')"
            ).fetchall()
        )
        rejected = {
            (s, k): reason
            for s, k, reason in connection.execute(
                f"select source, origin_key, reason from read_parquet('{home}/rejects/raw_samples/*/*.parquet')"
            ).fetchall()
        }
    assert truth
    for row in truth:
        key = (row["source"], row["origin_key"])
        if row["defect"] in INGEST_DEFECTS:
            assert rejected.get(key) == INGEST_DEFECTS[row["defect"]], row
        else:
            assert key in unified, row
