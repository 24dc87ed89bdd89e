"""End to end: `fineharbor demo` on a small scale, through a persistent Dagster instance."""

import itertools
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fineharbor import cli
from fineharbor.core.config import load_config
from fineharbor.core.pipeline import CLEANED, DECONTAMINATED, DEDUPLICATED, RAW, SCORED, UNIFIED
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_table

pytestmark = pytest.mark.slow

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
    # --force regenerates the sources and redoes every stage: the ids must come out the same
    assert cli.main(["demo", "--scale", "0.3", "--force"]) == 0
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
        RAW,
        UNIFIED,
        CLEANED,
        DEDUPLICATED,
        DECONTAMINATED,
    ]
    for source in storage.partitions(RAW):
        assert storage.count_rows(RAW, source) + storage.count_rows(RAW, source, kind="rejects") > 0
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


def planted_scores(home: Path):
    from fineharbor.demo.quality import score_planted_defects

    config = load_config(REPO / "fineharbor.yaml")
    return score_planted_defects(config, Storage(str(home)), home / "demo" / "ground_truth.parquet")


def test_planted_duplicates_are_clustered_per_transform(demo_home):
    home, _ = demo_home
    report = planted_scores(home).dedup
    assert set(report.by_transform) == {"exact", "resize", "jpeg", "crop", "flip"}
    for name, score in report.by_transform.items():
        assert score.planted > 0, name
        assert score.recall >= 0.98, (name, score.missed)
        assert score.precision >= 0.99, (name, score.wrong)
    assert report.precision >= 0.99, report.false_pairs


def test_planted_benchmark_copies_are_removed_without_false_positives(demo_home):
    home, _ = demo_home
    report = planted_scores(home).decontam
    every = report.by_transform["all"]
    assert every.planted >= 8
    assert every.recall >= 0.95, every.missed
    assert every.matched_original == every.flagged  # each names the benchmark image copied
    assert report.false_positive_rate <= 0.001, report.false_positives


def test_contamination_report_totals_equal_a_count_over_the_rejects(demo_home):
    home, _ = demo_home
    storage = Storage(str(home))
    report = {
        (r["source"], r["benchmark"]): r
        for r in storage.read_table("contamination_report").to_pylist()
    }
    with duckdb.connect() as connection:
        flagged, images = connection.execute(
            f"select count(*), sum(images_flagged) from read_parquet('{home}/rejects/decontaminated_samples/*/*.parquet') "
            "where reason = 'benchmark_match'"
        ).fetchall()[0]
        checked = connection.execute(
            f"select count(*) from read_parquet('{home}/data/deduplicated_samples/*/*.parquet', hive_partitioning=true) "
            "where source <> 'bench_vqa'"
        ).fetchall()[0][0]
    overall = report[("*", "*")]
    assert flagged > 0
    assert (overall["samples_flagged"], overall["images_flagged"]) == (flagged, images)
    assert overall["samples"] == checked
    assert overall["sample_rate"] == round(flagged / checked, 5)
    assert (
        sum(r["samples_flagged"] for (s, b), r in report.items() if s != "*" and b == "*")
        == flagged
    )


def test_contamination_rate_check_ran_on_every_train_partition(demo_home):
    import dagster as dg

    home, _ = demo_home
    config = load_config(REPO / "fineharbor.yaml")
    key = dg.AssetCheckKey(dg.AssetKey(DECONTAMINATED), "contamination_rate_within_limit")
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
        # check results returned with a partition's materialization carry its run's partition
        partitions = {
            instance.get_run_by_id(r.run_id).tags.get("dagster/partition") for r in records
        }
    evaluations = [r.event.dagster_event.event_specific_data for r in records if r.event]
    assert partitions >= set(config.source_names)
    assert all(e.passed for e in evaluations)
    assert {e.metadata["max_contamination_rate"].value for e in evaluations} == {0.05}


def test_a_changed_match_threshold_changes_the_next_materialization(demo_home, tmp_path):
    import dagster as dg

    from fineharbor.defs.decontam import decontaminated_samples
    from fineharbor.defs.partitions import source_partitions
    from fineharbor.defs.resources import EmbedderResource, FineharborProject

    home, _ = demo_home
    storage = Storage(str(home))
    source = "cauldron_charts"

    def flagged() -> int:
        rejects = storage.read_table(DECONTAMINATED, source, kind="rejects")
        return rejects.column("reason").to_pylist().count("benchmark_match")

    def materialize(config_path: Path) -> None:
        project = FineharborProject(config_path=str(config_path), home=str(home))
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(source_partitions.name, [source])
        result = dg.materialize(
            [decontaminated_samples],
            partition_key=source,
            instance=instance,
            resources={"project": project, "embedder": EmbedderResource()},
        )
        assert result.success

    before = flagged()
    strict = tmp_path / "fineharbor.yaml"
    settings = yaml.safe_load((REPO / "fineharbor.yaml").read_text())
    settings["stages"]["decontam"] = {"image_threshold": 1.0, "use_phash": False, "use_text": False}
    strict.write_text(yaml.safe_dump(settings))
    materialize(strict)
    after = flagged()
    materialize(REPO / "fineharbor.yaml")
    assert before > 0
    assert after < before
    assert flagged() == before


def test_demo_release_loads_and_holds_no_rejected_or_benchmark_sample(demo_home):
    import datasets
    import webdataset as wds

    from fineharbor.core.release.writer import verify_manifest

    home, _ = demo_home
    config = load_config(REPO / "fineharbor.yaml")
    root = home / "releases" / config.release.name / config.release.version
    shards = sorted(root.glob("data/*/*.parquet"))
    documents = [str(p) for p in shards if p.parent.name == "web_documents"]
    loaded = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in shards if str(p) not in documents], split="train"
    )
    assert loaded.column_names[:3] == ["images", "texts", "source"]
    # the interleaved source: OBELICS layout, images and texts aligned with nulls
    obelics = datasets.load_dataset("parquet", data_files=documents, split="train")
    assert obelics.column_names[:3] == ["images", "texts", "metadata"] and obelics.num_rows
    for row in obelics:
        assert [i is None for i in row["images"]] == [t is not None for t in row["texts"]]
    assert {"relevance_ratings", "relevance_min", "formatting_min"} <= set(loaded.column_names)
    released = set(loaded["sample_id"]) | set(obelics["sample_id"])
    assert len(released) == len(loaded) + len(obelics) >= config.release.min_samples
    benchmarks = {s.name for s in config.sources if s.role == "benchmark"}
    assert not set(loaded["source"]) & benchmarks
    with duckdb.connect() as connection:
        rejected = {
            r[0]
            for r in connection.execute(
                f"select sample_id from read_parquet('{home}/rejects/**/*.parquet', "
                "union_by_name=true)"
            ).fetchall()
        }
    assert rejected and not released & rejected
    tars = sorted(str(p) for p in (root / "webdataset").glob("*.tar"))
    pairs = list(wds.WebDataset(tars, shardshuffle=False))
    assert pairs and {p["__key__"] for p in pairs} <= released
    assert verify_manifest(Storage(str(home)).fs, str(root)) == []


def test_scores_rank_planted_mismatched_captions_below_true_pairs(demo_home):
    """scored_samples over the demo: the demo CLIP score (a model that never saw the demo's
    samples) and the learned quality score both put the planted mismatched captions below the
    true captions of the same sources (ROC AUC >= 0.9). Question-answer samples are printed, not
    asserted: their mismatches are single claims, many about chart labels the demo CLIP's 32 px
    cannot read."""
    from fineharbor.core.quality.metrics import roc_auc

    home, _ = demo_home
    truth = pq.read_table(home / "demo" / "ground_truth.parquet").to_pylist()
    planted = {(r["source"], r["origin_key"]): r["defect"] for r in truth}
    # scored_samples stores its scores; its rows are cleaned_samples' (core/stored.py)
    storage = Storage(str(home))
    columns = ["source", "origin_key", "clip_score", "quality_score", "texts"]
    samples = pa.concat_tables(
        read_stage_table(storage, SCORED, partition, columns=columns)
        for partition in storage.partitions(SCORED)
    )
    with duckdb.connect() as connection:
        connection.register("scored", samples)
        rows = connection.execute(
            "select source, origin_key, clip_score, quality_score, "
            "len(texts) = 1 and coalesce(texts[1].user, '') = '' from scored"
        ).fetchall()
    mismatched = {s for (s, _), d in planted.items() if d == "mismatched_caption"}
    scored = [r for r in rows if r[0] in mismatched and r[2] is not None]
    aucs = {}
    for kind, keep in (("captions", {True}), ("question-answer", {False}), ("all", {True, False})):
        negative = [
            r for r in scored if r[4] in keep and planted.get(r[:2]) == "mismatched_caption"
        ]
        positive = [r for r in scored if r[4] in keep and r[:2] not in planted]
        assert len(negative) >= 3 and len(positive) >= 30, kind
        for column, name in ((2, "clip"), (3, "quality")):
            aucs[kind, name] = roc_auc([r[column] for r in positive], [r[column] for r in negative])
    print(f"\nROC AUC true vs planted mismatched: {aucs}")
    assert aucs["captions", "clip"] >= 0.9 and aucs["captions", "quality"] >= 0.9, aucs
