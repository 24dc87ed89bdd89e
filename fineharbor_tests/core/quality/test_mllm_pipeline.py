"""``architecture: mllm`` in the pipeline: quality_classifier trains UniFilter's architecture from
tiny local configs (offline) on texts the judge's vision model wrote through a loopback server,
and scored_samples scores with it, with no scoring CLIP at all."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from fineharbor.core.pipeline import QUALITY_MODEL
from fineharbor.core.quality.mllm_classifier import META_FILE
from fineharbor.core.quality.stage import SCORED
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_table
from fineharbor.defs.quality import quality_classifier, scored_samples
from fineharbor.defs.resources import FineharborProject
from fineharbor.testing.unifilter import save_tiny_mllm
from fineharbor_tests.defs.test_quality_assets import make_project, materialize, metadata

pytestmark = pytest.mark.slow


def test_mllm_classifier_trains_and_scores_in_the_pipeline(
    tmp_path,
    home,
    writer_server,
):
    vision, lm = save_tiny_mllm(tmp_path / "models")
    project = make_project(tmp_path, home, clip_dir=tmp_path / "no-clip")
    config = yaml.safe_load((tmp_path / "fineharbor.yaml").read_text())
    config["stages"]["clip_score"] = {"model": None}  # the MLLM needs no CLIP
    config["stages"][QUALITY_MODEL] = {
        "architecture": "mllm",
        "synthetic_texts": "mllm",
        "mllm": {
            "vision_model": str(vision),
            "language_model": str(lm),
            "visual_tokens": 4,
            "max_length": 64,
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "device": "cpu",
        },
    }
    config["stages"]["judge"] = {
        "backend": "openai",
        "base_url": writer_server.url,
        "vision_model": "vlm",
        "axes": ["image_correspondence"],
        "retries": 0,
    }
    (tmp_path / "fineharbor.yaml").write_text(yaml.safe_dump(config))
    project = FineharborProject(config_path=str(tmp_path / "fineharbor.yaml"), home=str(home))

    with dg.instance_for_test() as instance:
        trained = metadata(materialize(project, instance, [quality_classifier]), QUALITY_MODEL)
        assert trained["trained"] is True and trained["architecture"] == "mllm"
        assert str(lm) in trained["model"] and str(vision) in trained["model"]
        assert "96 training texts from 24 real samples" in trained["synthetic_texts"]
        assert trained["texts_rewritten_by"].startswith("vlm (unifilter-levels/")
        assert (home / "models" / QUALITY_MODEL / META_FILE).is_file()
        written = writer_server.requests
        assert written >= 96  # every level of every real sample was asked for

        instance.add_dynamic_partitions("source", ["captions"])
        materialize(project, instance, [scored_samples], "captions")
    rows = {
        r["sample_id"]: r
        for r in read_stage_table(Storage(str(home)), SCORED, "captions").to_pylist()
    }
    assert rows["captions-text"]["quality_score"] is None  # no image: null, as with the CLIP-MLP
    scores = [rows[f"captions-{i}"]["quality_score"] for i in range(12)]
    assert all(s is not None and 0.0 <= s <= 3.0 for s in scores)
    assert all(rows[f"captions-{i}"]["clip_score"] is None for i in range(12))
