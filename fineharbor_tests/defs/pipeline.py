"""The project the Dagster asset tests share: two small sources and a missing one, and helpers
that materialize its stages (the ``ingest_project`` fixture in ``fineharbor_tests/conftest.py``
builds it)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.schema import IMAGE_TYPE, TURN_TYPE
from fineharbor.defs.jobs import JOB_ASSETS, stage_resources
from fineharbor.defs.resources import FineharborProject
from fineharbor.testing.images import make_image_bytes

FIRST_PASS_ASSETS = JOB_ASSETS["per_source_job"]
CROSS_SOURCE_ASSETS = JOB_ASSETS["cross_source_job"]
SECOND_PASS_ASSETS = JOB_ASSETS["filter_job"]
QUALITY_MODEL_ASSETS = JOB_ASSETS["quality_model_job"]
SCORING_ASSETS = JOB_ASSETS["scoring_job"]

CONFIG = """
sources:
  - name: charts
    reader: hf_parquet
    location: charts
    mapping: {preset: cauldron}
  - name: scenes
    reader: json
    location: scenes/data.jsonl
    mapping: {preset: llava, origin_key: id}
  - name: ghost
    reader: image_folder
    location: does_not_exist
    mapping: {caption: txt}
stages:
  clip_score: {model: null}  # no CLIP: scores are null (quality scoring has its own tests)
release: {require_review: false}  # these tests are about the stages, not the review gate
"""


def write_ingest_project(tmp_path: Path, home: Path) -> FineharborProject:
    """Two small sources (Parquet charts, JSON scenes, one record of each unmappable) and one
    whose location does not exist, in ``tmp_path``."""
    (tmp_path / "charts").mkdir()
    schema = pa.schema([("images", pa.list_(IMAGE_TYPE)), ("texts", pa.list_(TURN_TYPE))])
    rows = [
        {
            "images": [{"bytes": make_image_bytes(i), "path": f"{i}.jpg"}],
            "texts": [{"user": f"q{i}", "assistant": f"a{i}"}],
        }
        for i in range(6)
    ]
    rows.append({"images": [], "texts": []})  # unmappable: no turns
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "charts" / "train.parquet")
    (tmp_path / "scenes" / "images").mkdir(parents=True)
    lines = []
    for i in range(4):
        (tmp_path / "scenes" / "images" / f"{i}.jpg").write_bytes(make_image_bytes(10 + i))
        lines.append(
            json.dumps(
                {
                    "id": f"s{i}",
                    "image": f"images/{i}.jpg",
                    "conversations": [
                        {"from": "human", "value": "<image>\nq"},
                        {"from": "gpt", "value": "a"},
                    ],
                }
            )
        )
    lines.append("{oops")
    (tmp_path / "scenes" / "data.jsonl").write_text("\n".join(lines))
    (tmp_path / "fineharbor.yaml").write_text(CONFIG)
    return FineharborProject(config_path=str(tmp_path / "fineharbor.yaml"), home=str(home))


def resources(project):
    return stage_resources(project)


def materialize(project, instance, partition, assets=FIRST_PASS_ASSETS):
    return dg.materialize(
        assets,
        partition_key=partition,
        instance=instance,
        resources=resources(project),
        raise_on_error=False,
    )


def run_pipeline(project, instance, partitions):
    for partition in partitions:
        assert materialize(project, instance, partition).success
    assert dg.materialize(
        CROSS_SOURCE_ASSETS, instance=instance, resources=resources(project)
    ).success
    for partition in partitions:
        assert materialize(project, instance, partition, SECOND_PASS_ASSETS).success
    assert dg.materialize(
        QUALITY_MODEL_ASSETS, instance=instance, resources=resources(project)
    ).success
    for partition in partitions:
        assert materialize(project, instance, partition, SCORING_ASSETS).success
