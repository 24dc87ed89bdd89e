"""quality_classifier and scored_samples materialized through Dagster on a tiny project.

The upstream partitions (decontaminated_samples) are written directly, so these tests exercise the
quality assets only; the CLIP is a tiny random open_clip model loaded from a local directory, the
judge a loopback OpenAI-compatible server or a tiny `transformers` model built from a config."""

import json

import dagster as dg
import pyarrow as pa
import pytest
import yaml

from fineharbor.core.cleaning import CLEANED_SCHEMA
from fineharbor.core.pipeline import DECONTAMINATED, QUALITY_MODEL
from fineharbor.core.quality.stage import SCORED, SCORED_SCHEMA
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_table
from fineharbor.defs.quality import QualityModelsResource, quality_classifier, scored_samples
from fineharbor.defs.resources import FineharborProject
from fineharbor.testing.models import save_tiny_clip
from fineharbor.testing.stored import write_kept_rows
from fineharbor_tests.core.judge.conftest import save_text_model
from fineharbor_tests.core.quality.conftest import png

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220)}
SOURCES = ("captions", "vqa")
AXES = ("formatting", "relevance", "visual_dependency", "image_correspondence")


def _rows(source: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        name = list(COLORS)[i % len(COLORS)]
        if source == "vqa":
            texts = [
                {"user": "What colour is the square?", "assistant": f"It is {name}."},
                {"user": "Is it a square?", "assistant": "Yes."},
            ]
        else:
            texts = [{"user": "", "assistant": f"A {name} square, number {i}."}]
        rows.append(
            {
                "sample_id": f"{source}-{i}",
                "source": source,
                "origin_key": str(i),
                "images": [{"bytes": png(COLORS[name], (40 + i, 32)), "path": None}],
                "texts": texts,
            }
        )
    # a text-only sample: no CLIP score, no learned score, no image_correspondence rating
    rows.append(
        {
            "sample_id": f"{source}-text",
            "source": source,
            "origin_key": "text",
            "images": [],
            "texts": [{"user": "Say hi.", "assistant": "Hi."}],
        }
    )
    return rows


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def make_project(tmp_path, home, clip_dir, judge: dict | None = None) -> FineharborProject:
    storage = Storage(str(home))
    for source in SOURCES:
        table = pa.Table.from_pylist(_rows(source, 12), schema=CLEANED_SCHEMA)
        write_kept_rows(storage, DECONTAMINATED, source, table)
    config = {
        "sources": [
            {"name": s, "reader": "hf_parquet", "location": s, "mapping": {"preset": "cauldron"}}
            for s in SOURCES
        ],
        "stages": {
            "clip_score": {"model": f"local-dir:{clip_dir}", "pretrained": None, "device": "cpu"},
            QUALITY_MODEL: {"hidden": 16, "epochs": 5},
            "judge": judge or {"backend": "none"},
        },
    }
    (tmp_path / "fineharbor.yaml").write_text(yaml.safe_dump(config))
    return FineharborProject(config_path=str(tmp_path / "fineharbor.yaml"), home=str(home))


def materialize(project, instance, assets, partition=None):
    result = dg.materialize(
        assets,
        partition_key=partition,
        instance=instance,
        resources={"project": project, "models": QualityModelsResource()},
        selection=assets,
    )
    assert result.success
    return result


def score_all(project, instance):
    materialize(project, instance, [quality_classifier])
    for source in SOURCES:
        instance.add_dynamic_partitions("source", [source])
        materialize(project, instance, [scored_samples], source)


def metadata(result, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


def test_classifier_then_scores_keep_every_row_with_judge_off(tmp_path, home, clip_dir):
    project = make_project(tmp_path, home, clip_dir)
    with dg.instance_for_test() as instance:
        trained = materialize(project, instance, [quality_classifier])
        meta = metadata(trained, QUALITY_MODEL)
        assert meta["trained"] is True and 0.0 <= meta["heldout_accuracy"] <= 1.0
        assert meta["real_samples"] == 24 and "confusion matrix" in meta["summary"]
        kinds = meta["examples_by_kind"]
        assert kinds["captions"]["real_samples"] == 24 and kinds["documents"]["examples"] == 0
        assert "| captions | 24 |" in meta["summary"]
        assert (home / "models" / QUALITY_MODEL / "quality_classifier.pt").is_file()

        instance.add_dynamic_partitions("source", list(SOURCES))
        result = materialize(project, instance, [scored_samples], "vqa")
        meta = metadata(result, SCORED)
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks)
    assert meta["dagster/row_count"] == 13 and meta["rows_rejected"] == 0
    assert meta["samples_per_second"] > 0 and "CLIP score" in meta["clip_score_histogram"]
    table = read_stage_table(Storage(str(home)), SCORED, "vqa")
    assert table.schema.equals(SCORED_SCHEMA, check_metadata=False)
    rows = {r["sample_id"]: r for r in table.to_pylist()}
    assert rows["vqa-text"]["clip_score"] is None and rows["vqa-text"]["quality_score"] is None
    clip = [rows[f"vqa-{i}"]["clip_score"] for i in range(12)]
    quality = [rows[f"vqa-{i}"]["quality_score"] for i in range(12)]
    assert all(-1.0 <= v <= 1.0 for v in clip) and all(0.0 <= v <= 3.0 for v in quality)
    for axis in AXES:  # judge off: whole values null
        assert table.column(f"{axis}_ratings").null_count == 13
        assert table.column(f"{axis}_min").null_count == 13


def test_openai_judge_fills_finevision_columns_and_reruns_hit_the_cache(
    tmp_path, home, clip_dir, fake_server
):
    judge = {
        "backend": "openai",
        "base_url": fake_server.url,
        "text_model": "judge",
        "vision_model": "judge-vl",
        "retries": 0,
    }
    project = make_project(tmp_path, home, clip_dir, judge)
    with dg.instance_for_test() as instance:
        score_all(project, instance)
        first = fake_server.requests
        distinct = {json.dumps(body, sort_keys=True) for body in fake_server.bodies}
        fake_server.reset_counts()
        result = materialize(project, instance, [scored_samples], "vqa")
        meta = metadata(result, SCORED)
    # 13 samples x turns (2 each, 1 for the text-only one) x 3 text axes + image axis per image
    per_source = {"vqa": 12 * 2 * 4 + 1 * 3, "captions": 12 * 4 + 3}
    # identical inputs (question, answer, image) of different samples are sent once
    assert first == len(distinct) < sum(per_source.values())
    assert fake_server.requests == 0 and meta["judge/cache_hits"] == per_source["vqa"]
    assert meta["judge/parse_failures"] == 0 and "parse failures" in meta["ratings_distribution"]

    import datasets

    files = str(home / "data" / SCORED / "*" / "*.parquet")
    loaded = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf")
    )
    for axis in AXES:
        assert loaded.features[f"{axis}_ratings"].feature == datasets.Value("int64")
        assert loaded.features[f"{axis}_min"] == datasets.Value("int64")
    expected = {"formatting": 4, "relevance": 5, "visual_dependency": 3, "image_correspondence": 2}
    row = next(r for r in loaded if r["sample_id"] == "vqa-0")
    for axis, rating in expected.items():
        assert row[f"{axis}_ratings"] == [rating, rating] and row[f"{axis}_min"] == rating
    text_only = next(r for r in loaded if r["sample_id"] == "vqa-text")
    assert text_only["image_correspondence_ratings"] is None
    assert text_only["formatting_ratings"] == [4]
    assert len(loaded) == 26


def test_transformers_judge_rates_text_axes_in_process(
    tmp_path, home, clip_dir, single_torch_thread
):
    model_dir = save_text_model(tmp_path / "judge", always_four=True)
    judge = {
        "backend": "transformers",
        "text_model": str(model_dir),
        "vision_model": None,
        "device": "cpu",
        "max_new_tokens": 1,
    }
    project = make_project(tmp_path, home, clip_dir, judge)
    with dg.instance_for_test() as instance:
        materialize(project, instance, [quality_classifier])
        instance.add_dynamic_partitions("source", ["captions"])
        result = materialize(project, instance, [scored_samples], "captions")
        meta = metadata(result, SCORED)
    table = read_stage_table(Storage(str(home)), SCORED, "captions")
    for axis in ("formatting", "relevance", "visual_dependency"):
        assert table.column(f"{axis}_ratings").to_pylist() == [[4]] * 13
        assert table.column(f"{axis}_min").to_pylist() == [4] * 13
    assert table.column("image_correspondence_ratings").null_count == 13
    # every turn rated once; identical inputs of different samples were sent once
    sent, reused = meta["judge/requests_sent"], meta["judge/cache_hits"]
    assert sent + reused == 13 * 3 and sent < 13 * 3 and meta["judge/parse_failures"] == 0
