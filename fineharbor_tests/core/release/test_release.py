import json
import re
from pathlib import Path

import datasets
import pytest
import webdataset as wds

from fineharbor.core.release.build import build_concept_clusters, build_release_mix
from fineharbor.core.release.select import ReleaseInputError
from fineharbor.core.release.writer import verify_manifest
from fineharbor.core.storage import Storage
from fineharbor.defs.resources import STAGE_TABLES
from fineharbor.defs.sql_models import SQL_DIR
from fineharbor.testing.release_input import project, write_input

from .test_selection import select_rows

FINEVISION_COLUMNS = [
    "images",
    "texts",
    "source",
    "relevance_ratings",
    "relevance_min",
    "image_correspondence_ratings",
    "image_correspondence_min",
    "visual_dependency_ratings",
    "visual_dependency_min",
    "formatting_ratings",
    "formatting_min",
]


@pytest.fixture
def storage(home):
    return Storage(str(home))


def release(tmp_path, storage, recipe="", stages=""):
    return build_release_mix(project(tmp_path, recipe, stages), storage, STAGE_TABLES, SQL_DIR)


def release_dir(storage, name="fineharbor-release", version="0.1.0"):
    return storage.path("releases", name, version)


RECIPE = """
  name: demo
  version: "1.0"
  seed: 7
  clip_score_min: 0.2
  clip_score_max: 0.45
  quality_min: 0.5
  min_ratings: {relevance: 2}
  sources: [{name: pairs, cap: 15}, {name: chats, weight: 0.9}, {name: bench}]
  shard_rows: 10
  webdataset: true
  webdataset_shard_rows: 8
"""


def test_release_loads_with_datasets_and_webdataset_and_verifies(tmp_path, storage):
    write_input(storage)
    result = release(tmp_path, storage, RECIPE)
    root = release_dir(storage, "demo", "1.0")
    loaded = datasets.load_dataset("parquet", data_files=f"{root}/data/*/*.parquet", split="train")
    assert loaded.column_names == [*FINEVISION_COLUMNS, "sample_id"]
    assert len(loaded) == result.index.num_rows > 0
    first = loaded[0]
    assert first["images"][0].size == (64, 48)  # decoded as PIL images: the Image feature
    assert set(loaded["source"]) == {"pairs", "chats"}
    # per-source configs in the Hub layout
    chats = datasets.load_dataset(
        "parquet", data_files=f"{root}/data/chats/*.parquet", split="train"
    )
    assert set(chats["source"]) == {"chats"}

    tars = sorted(f.path for f in result.files if f.kind == "webdataset")
    assert tars == ["webdataset/pairs-00000.tar", "webdataset/pairs-00001.tar"]  # 8 per shard
    samples = list(wds.WebDataset([f"{root}/{t}" for t in tars], shardshuffle=False).decode("pil"))
    # caption pairs come from caption sources only (chats left with one turn are not pairs)
    pairs = [r for r in result.index.to_pylist() if r["source"] == "pairs"]
    assert len(samples) == len(pairs)
    assert {s["__key__"] for s in samples} == {r["sample_id"] for r in pairs}
    assert {r["webdataset_shard"] for r in pairs} == set(tars)
    assert samples[0]["jpg"].size == (64, 48)
    assert re.fullmatch(r"pairs answer \d+\.0", samples[0]["txt"])
    assert samples[0]["json"]["sample_id"] == samples[0]["__key__"]

    assert verify_manifest(storage.fs, root) == []
    manifest = json.loads(Path(f"{root}/manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {"README.md", *tars}
    shard = next(f["path"] for f in manifest["files"] if f["path"].endswith(".parquet"))
    with open(f"{root}/{shard}", "ab") as handle:
        handle.write(b"x")
    assert verify_manifest(storage.fs, root) == [shard]


def test_no_rejected_or_benchmark_sample_is_released_and_rows_are_conserved(tmp_path, storage):
    write_input(storage)
    result = release(tmp_path, storage, RECIPE)
    released = set(result.index.column("sample_id").to_pylist())
    rejected = set(result.rejects.column("sample_id").to_pylist())
    assert not released & rejected
    assert len(released) + len(rejected) == result.input_rows == 60
    assert "bench" not in set(result.index.column("source").to_pylist())
    reasons = set(result.rejects.column("reason").to_pylist())
    assert reasons >= {"clip_score_low", "clip_score_high", "quality_low", "source_cap"}
    kept = result.index.to_pylist()
    assert all(0.2 <= r["clip_score"] <= 0.45 and r["quality_score"] >= 0.5 for r in kept)
    assert sum(r["source"] == "pairs" for r in kept) == 15
    # turn-level judge filtering: every released turn meets the minimum, minimums recomputed
    for r in kept:
        assert all(x >= 2 for x in r["relevance_ratings"])
        assert r["relevance_min"] == min(r["relevance_ratings"])
        assert r["n_turns"] == len(r["relevance_ratings"])
    assert any(r["n_turns_dropped"] > 0 for r in kept)


def test_same_recipe_and_seed_give_the_same_bytes(tmp_path, storage):
    write_input(storage)
    first = {f.path: f.sha256 for f in release(tmp_path, storage, RECIPE).files}
    second = {f.path: f.sha256 for f in release(tmp_path, storage, RECIPE).files}
    assert first == second
    other = {
        f.path: f.sha256
        for f in release(tmp_path, storage, RECIPE.replace("seed: 7", "seed: 8")).files
    }
    assert other != first


def _card_tables(card: str) -> dict[str, list[dict]]:
    """Markdown tables of the card, by the section heading above them."""
    tables, heading, lines = {}, None, card.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            heading = line[3:]
        if line.startswith("| ") and (i == 0 or not lines[i - 1].startswith("|")):
            header = [c.strip() for c in line.strip("|").split("|")]
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                body.append(
                    dict(zip(header, [c.strip() for c in row.strip("|").split("|")], strict=True))
                )
            tables[heading] = body
    return tables


def _same(card_value: str, model_value) -> bool:
    if model_value is None:
        return card_value == ""
    if isinstance(model_value, int | float):
        return float(card_value) == pytest.approx(float(model_value), rel=1e-5)
    return card_value == str(model_value)


def test_every_number_in_the_card_equals_its_sql_model(tmp_path, storage):
    import duckdb

    from fineharbor.core.catalog import connect_in_memory

    write_input(storage)
    release(tmp_path, storage, RECIPE)
    card = Path(release_dir(storage, "demo", "1.0"), "README.md").read_text()
    header = re.match(r"---\n(.*?)\n---\n", card, re.S).group(1)
    import yaml

    meta = yaml.safe_load(header)
    assert meta["license"] == ["apache-2.0", "cc-by-4.0"]
    assert [c["config_name"] for c in meta["configs"]] == ["default", "chats", "pairs"]
    tables = _card_tables(card)
    # where the web alt-text pair rules applied: the webdataset_caption source only
    assert (
        "aspect ratio <= 3 (DataComp) and image >= 5120 bytes (LAION) applied only to the "
        "sources pairs;" in card
    )
    # the models as the SQL model assets compute them, over the written Parquet files
    from fineharbor.core.sql_models import load_models, run_models

    views = {t.asset for t in STAGE_TABLES} | {f"{t.asset}_rejects" for t in STAGE_TABLES}
    with connect_in_memory(storage, STAGE_TABLES) as connection:
        assert isinstance(connection, duckdb.DuckDBPyConnection)
        models = run_models(
            connection,
            load_models(SQL_DIR, views),
            [
                "release_composition",
                "release_rejects",
                "contamination_report",
                "ratings_distribution",
            ],
        )
    sections = {
        "Size and licenses": "release_composition",
        "Benchmark contamination": "contamination_report",
        "Judge ratings": "ratings_distribution",
    }
    for section, model in sections.items():
        expected = models[model].to_pylist()
        shown = tables[section]
        assert len(shown) == len(expected) > 0, section
        for card_row, model_row in zip(shown, expected, strict=True):
            for column, value in card_row.items():
                assert _same(value, model_row[column]), (section, column, value, model_row[column])
    removed = {}
    for row in models["release_rejects"].to_pylist():
        removed[row["reason"]] = removed.get(row["reason"], 0) + row["samples"]
    for row in tables["Filters"]:
        assert int(row["samples removed"]) == removed.get(row["reason code"].strip("`"), 0)
    assert sum(int(r["samples removed"]) for r in tables["Filters"]) == sum(removed.values())


def test_a_filter_on_a_missing_column_names_the_column_and_its_stage(tmp_path, storage):
    write_input(storage, scored=False)
    with pytest.raises(ReleaseInputError, match=r"clip_score.*scored_samples"):
        release(tmp_path, storage, "  clip_score_min: 0.3\n")
    with pytest.raises(ReleaseInputError, match=r"relevance_ratings"):
        release(tmp_path, storage, "  min_ratings: {relevance: 3}\n")
    result = release(tmp_path, storage)  # no thresholds: unscored input releases fine
    assert result.index.num_rows == 60
    assert result.tables["ratings_distribution"].num_rows == 0


def test_turn_filtering_and_missing_scores():
    from fineharbor.core.release.params import ReleaseRecipe

    base = {"source": "s", "origin_key": "k", "n_turns": 3, "clip_score": None}
    row = {**base, "sample_id": "a", "relevance_ratings": [5, 1, None]}
    empty = {**base, "sample_id": "b", "relevance_ratings": [1, 1, 1]}
    recipe = ReleaseRecipe(min_ratings={"relevance": 3}, clip_score_min=0.3)
    lenient, rejects = select_rows([row, empty], recipe)
    assert lenient == {"a": [0, 2]}  # unrated turn and missing CLIP score pass by default
    assert [(r["sample_id"], r["reason"]) for r in rejects] == [("b", "rating_below_min")]
    recipe = ReleaseRecipe(min_ratings={"relevance": 3}, require_scores=True)
    assert select_rows([row], recipe)[0] == {"a": [0]}


def test_balanced_release_flattens_concepts(tmp_path, storage):
    write_input(storage, n_pairs=120, n_chats=20)
    stages = "  concepts:\n    embedding: copy_embedding\n    n_iters: 10\n    levels: [{n_clusters: 12}, {n_clusters: 3}]\n"
    config = project(tmp_path, "  balancing: {enabled: true, target_size: 60}\n", stages)
    clusters, stats = build_concept_clusters(config, storage)
    assert clusters.num_rows == 140 and stats["embedding"] == "copy_embedding"
    assert all(len(c) == 2 for c in clusters.column("clusters").to_pylist())
    result = build_release_mix(config, storage, STAGE_TABLES, SQL_DIR)
    assert result.index.num_rows == 60
    top = result.facts.flatness[-1]
    assert top["max_median_ratio_after"] < top["max_median_ratio_before"]
    assert "concept_balance" in set(result.rejects.column("reason").to_pylist())


def test_image_only_samples_enter_unless_the_recipe_leaves_them_out():
    from fineharbor.core.release.params import ReleaseRecipe

    image_only = {"sample_id": "i", "source": "s", "origin_key": "k", "n_turns": 0}
    rated = {**image_only, "sample_id": "r", "n_turns": 1, "relevance_ratings": [1]}
    minimums = {"relevance": 3}
    admitted, _ = select_rows([image_only, rated], ReleaseRecipe(min_ratings=minimums))
    # no turn to rate: the judge minimum does not apply to an image-only sample
    assert admitted == {"i": None}
    recipe = ReleaseRecipe(min_ratings=minimums, include_image_only=False)
    _, excluded = select_rows([image_only], recipe)
    assert [(r["sample_id"], r["reason"]) for r in excluded] == [("i", "image_only_excluded")]


def test_no_approved_source_writes_no_release_and_names_who_awaits_review(tmp_path, storage):
    from fineharbor.core.release.select import ReleaseGate, left_out_by

    write_input(storage)
    config = project(tmp_path)
    why = "unreviewed: approve it with `fineharbor review pairs --approve`"
    gate = ReleaseGate(blocked={"pairs": why, "chats": "unreviewed"})
    result = build_release_mix(config, storage, STAGE_TABLES, SQL_DIR, gate)
    assert not result.written and result.awaiting_review == {"pairs": why, "chats": "unreviewed"}
    assert result.index.num_rows == 0 and result.files == []
    assert result.input_rows == result.rejects.num_rows == 60
    assert not storage.exists(release_dir(storage))
    # one approved source is enough for a release
    partial = build_release_mix(config, storage, STAGE_TABLES, SQL_DIR, ReleaseGate({"pairs": why}))
    assert partial.written and partial.index.num_rows == 20
    reasons = {"source_cap": 6, "clip_score_low": 40}
    assert left_out_by(reasons) == (
        "clip_score_low: 40 (release.clip_score_min), source_cap: 6 (release.sources[].cap)"
    )
