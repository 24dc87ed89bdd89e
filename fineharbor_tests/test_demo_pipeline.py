"""End to end: `fineharbor demo` on a small scale, through a persistent Dagster instance."""

import itertools
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
    chain = [
        "raw_samples",
        "unified_samples",
        "cleaned_samples",
        "deduplicated_samples",
        "decontaminated_samples",
    ]
    for source in storage.partitions("raw_samples"):
        assert (
            storage.count_rows("raw_samples", source)
            + storage.count_rows("raw_samples", source, kind="rejects")
            > 0
        )
        for upstream, stage in itertools.pairwise(chain):
            assert storage.count_rows(upstream, source) == storage.count_rows(
                stage, source
            ) + storage.count_rows(stage, source, kind="rejects"), (stage, source)


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


CLEANING_DEFECTS = {
    "corrupt_image": "image_corrupt",
    "truncated_image": "image_truncated",
    "small_image_bytes": "image_too_small_bytes",
    "extreme_aspect": "aspect_ratio",
    "short_alt_text": "alt_text_short",
    "foreign_language": "language_not_allowed",
    "gui_action_unparseable": "gui_action_unparseable",
}


def test_cleaning_rejects_every_planted_defect_and_keeps_clean_samples(demo_home):
    home, _ = demo_home
    truth = pq.read_table(home / "demo" / "ground_truth.parquet").to_pylist()
    with duckdb.connect() as connection:
        rejected = dict(
            ((s, k), reason)
            for s, k, reason in connection.execute(
                f"select source, origin_key, reason from read_parquet('{home}/rejects/cleaned_samples/*/*.parquet')"
            ).fetchall()
        )
        unified = connection.execute(
            f"select source, origin_key from read_parquet('{home}/data/unified_samples/*/*.parquet')"
        ).fetchall()
    for row in truth:
        if row["defect"] in CLEANING_DEFECTS:
            assert (
                rejected.get((row["source"], row["origin_key"])) == CLEANING_DEFECTS[row["defect"]]
            ), row
    planted = {(r["source"], r["origin_key"]) for r in truth}
    clean = [key for key in unified if key not in planted]
    wrongly = [key for key in clean if key in rejected]
    assert len(wrongly) <= 0.01 * len(clean), wrongly


def test_scores_rank_planted_mismatched_captions_below_true_pairs(demo_home):
    """scored_samples over the demo: the demo CLIP score and the learned quality score both put
    the planted mismatched captions below the true pairs of the same sources (ROC AUC). Measured at
    scale 0.3 (9 mismatches), seed 0, default 300 CLIP steps: CLIP 0.898, classifier 0.910; at
    scale 1.0: 0.97 and 0.96."""
    from fineharbor.core.quality.metrics import roc_auc

    home, _ = demo_home
    truth = pq.read_table(home / "demo" / "ground_truth.parquet").to_pylist()
    planted = {(r["source"], r["origin_key"]): r["defect"] for r in truth}
    with duckdb.connect() as connection:
        rows = connection.execute(
            "select source, origin_key, clip_score, quality_score "
            f"from read_parquet('{home}/data/scored_samples/*/*.parquet')"
        ).fetchall()
    mismatched = {s for (s, _), d in planted.items() if d == "mismatched_caption"}
    scored = [r for r in rows if r[0] in mismatched and r[2] is not None]
    negative = [r for r in scored if planted.get((r[0], r[1])) == "mismatched_caption"]
    positive = [r for r in scored if (r[0], r[1]) not in planted]
    assert len(negative) >= 5 and len(positive) >= 50
    for column in (2, 3):
        auc = roc_auc([r[column] for r in positive], [r[column] for r in negative])
        assert auc >= 0.85, (column, auc)
