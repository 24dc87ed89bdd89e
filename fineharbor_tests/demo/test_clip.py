"""On the generated demo (scale 0.3): a small demo CLIP trained on a pretraining corpus drawn
like the demo (never on the demo's samples) and the UniFilter-style classifier trained on its
frozen features over the demo's samples (as the pipeline trains it) both rank the planted
mismatched captions below the true pairs.

The CLIP is trained on fewer pairs and steps than the default (SMALL) to keep the test fast."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from fineharbor.core.config import load_config
from fineharbor.core.quality.classifier import (
    build_quality_training_set,
    score_quality,
    train_quality_classifier,
)
from fineharbor.core.quality.clip_score import clip_scores
from fineharbor.core.quality.metrics import roc_auc
from fineharbor.core.quality.params import ClipScoreParams, QualityClassifierParams
from fineharbor.demo import generate_demo
from fineharbor.demo.clip import (
    TRAINING_FILE,
    DemoClipConfig,
    demo_clip_aucs,
    demo_pairs,
    load_demo_clip,
    pretraining_pairs,
    train_demo_clip,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCALE = 0.3
SMALL = DemoClipConfig(pretraining_pairs=1500, steps=200)
CLIP_AUC_MIN = 0.9
CLASSIFIER_AUC_MIN = 0.9


@pytest.fixture(scope="module")
def demo(tmp_path_factory, monkeypatch_module):
    home = tmp_path_factory.mktemp("quality_demo")
    monkeypatch_module.setenv("FINEHARBOR_HOME", str(home))
    generate_demo(home, "http://127.0.0.1:9", seed=0, scale=SCALE)
    pairs = demo_pairs(
        load_config(REPO / "fineharbor.yaml"), home / "demo" / "ground_truth.parquet"
    )
    corpus = pretraining_pairs(SMALL.pretraining_pairs, seed=0)
    assert not {image for image, _ in corpus} & set(pairs.images)
    model_dir = train_demo_clip(corpus, home / "clip", seed=0, config=SMALL)
    return pairs, model_dir


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def _table(pairs, rows: list[int]) -> pa.Table:
    return pa.table(
        {
            "sample_id": [str(i) for i in rows],
            "images": [[{"bytes": pairs.images[i], "path": None}] for i in rows],
            "texts": [[{"user": "", "assistant": pairs.texts[i]}] for i in rows],
            "source": [pairs.sources[i] for i in rows],
        }
    )


def _auc(scores: pa.Array, positive: list[int], negative: list[int]) -> float:
    values = scores.to_pylist()
    return roc_auc(
        [values[i] for i in positive if values[i] is not None],
        [values[i] for i in negative if values[i] is not None],
    )


def test_demo_clip_and_classifier_rank_planted_mismatches_below_true_pairs(demo):
    pairs, model_dir = demo
    assert sum(pairs.mismatched) >= 5 and sum(pairs.caption) >= 50
    report = json.loads((model_dir / TRAINING_FILE).read_text())["report"]
    assert report["steps_done"] == SMALL.steps and not report["stopped_by_budget"]
    embedder = load_demo_clip(model_dir)
    aucs = {r.kind: r for r in demo_clip_aucs(embedder, pairs)}
    # the CLIP score's own use: image-caption pairs
    captions = [i for i, c in enumerate(pairs.caption) if c]
    everything = _table(pairs, list(range(len(pairs.images))))
    clip = clip_scores(everything, embedder, ClipScoreParams(model=None))
    true = [i for i in captions if not pairs.mismatched[i]]
    mismatched = [i for i in captions if pairs.mismatched[i]]
    assert aucs["captions"].auc == pytest.approx(_auc(clip, true, mismatched), abs=1e-3)
    # the classifier learns from every demo sample, mismatches included, as the pipeline's does
    train_set = build_quality_training_set(everything, seed=0)
    model = train_quality_classifier(train_set, embedder, QualityClassifierParams(seed=0))
    quality = score_quality(everything, model, embedder)
    quality_auc = _auc(quality, true, mismatched)
    print(
        f"CLIP AUC {[(r.kind, round(r.auc, 3)) for r in aucs.values()]}; classifier {quality_auc:.3f}"
    )
    assert model.report.heldout_accuracy > 0.4  # four levels: chance is 0.25
    assert aucs["captions"].auc >= CLIP_AUC_MIN and quality_auc >= CLASSIFIER_AUC_MIN
