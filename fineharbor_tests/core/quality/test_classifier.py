"""The learned quality classifier: training on a toy set, save/load roundtrip, and scoring of
interleaved documents."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.pipeline import QUALITY_MODEL
from fineharbor.core.quality.classifier import (
    QualityModel,
    build_quality_training_set,
    score_quality,
    train_quality_classifier,
)
from fineharbor.core.quality.metrics import confusion_matrix, roc_auc
from fineharbor.core.quality.params import QualityClassifierParams
from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor.demo.clip import load_demo_clip

from .conftest import image, png, turn

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 30),
}


def _table(rows: list[tuple[list[bytes], list[dict]]]) -> pa.Table:
    return pa.table(
        {
            "sample_id": [f"s{i}" for i in range(len(rows))],
            "source": ["t"] * len(rows),
            "origin_uri": [None] * len(rows),
            "origin_key": [str(i) for i in range(len(rows))],
            "images": [[image(d) for d in r[0]] for r in rows],
            "texts": [r[1] for r in rows],
            "segments": [None] * len(rows),  # not interleaved documents
            "metadata": [None] * len(rows),
        },
        schema=UNIFIED_SCHEMA,
    )


def _toy_samples(n: int = 24) -> pa.Table:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = list(COLORS)[i % len(COLORS)]
        size = (int(rng.integers(30, 50)), int(rng.integers(30, 50)))
        rows.append(([png(COLORS[name], size)], [turn("", f"A {name} square number {i}.")]))
    return _table(rows)


@pytest.fixture(scope="module")
def trained(tiny_clip_dir):
    embedder = load_demo_clip(tiny_clip_dir)
    data = build_quality_training_set(_toy_samples(), seed=0)
    params = QualityClassifierParams(hidden=32, epochs=40, batch_size=32, seed=0)
    return embedder, train_quality_classifier(data, embedder, params)


def test_training_reports_heldout_accuracy_and_confusion(trained):
    _, model = trained
    report = model.report
    assert report.n_images == 24 and report.n_heldout > 0 and report.n_train > 0
    assert 0.0 <= report.heldout_accuracy <= 1.0
    matrix = np.array(report.confusion)
    assert matrix.shape == (4, 4) and matrix.sum() == report.n_heldout
    assert "held-out accuracy" in report.summary()


def test_save_load_roundtrip_gives_identical_scores(trained, tmp_path):
    embedder, model = trained
    samples = _toy_samples(6)
    before = score_quality(samples, model, embedder).to_pylist()
    path = model.save(tmp_path / "clf")
    meta = json.loads((path / "quality_classifier.json").read_text())
    assert meta["dim"] == embedder.dim and meta["format_version"] == 1
    loaded = QualityModel.load(path)
    after = score_quality(samples, loaded, embedder).to_pylist()
    assert after == pytest.approx(before, abs=1e-6)
    assert loaded.report.heldout_accuracy == model.report.heldout_accuracy
    with pytest.raises(FileNotFoundError, match=QUALITY_MODEL):
        QualityModel.load(tmp_path / "missing")


def test_scores_interleaved_documents_and_nulls(trained):
    embedder, model = trained
    long_text = " ".join(["A red square and a blue square next to each other."] * 30)  # > 1 chunk
    table = _table(
        [
            (
                [png(COLORS["red"]), png(COLORS["blue"]), b"broken"],
                [turn("", "Intro."), turn("Q?", long_text), turn("", "Outro.")],
            ),
            ([], [turn("", "text only")]),
            ([b"broken"], [turn("", "undecodable only")]),
            ([png(COLORS["green"])], []),
        ]
    )
    scores = score_quality(table, model, embedder)
    assert scores.type == pa.float32()
    values = scores.to_pylist()
    assert values[0] is not None and 0.0 <= values[0] <= 3.0
    assert values[1:] == [None, None, None]


def test_features_of_another_dimension_are_refused(trained):
    _, model = trained
    with pytest.raises(ValueError, match="trained on dim"):
        model.predict(
            np.zeros((1, model.dim + 1), np.float32), np.zeros((1, model.dim + 1), np.float32)
        )


def test_classification_objective_scores_the_expected_level(tiny_clip_dir, tmp_path):
    embedder = load_demo_clip(tiny_clip_dir)
    data = build_quality_training_set(_toy_samples(8), seed=1)
    params = QualityClassifierParams(objective="classification", hidden=16, epochs=5)
    model = train_quality_classifier(data, embedder, params)
    loaded = QualityModel.load(model.save(tmp_path / "c"))
    values = score_quality(_toy_samples(3), loaded, embedder).to_pylist()
    assert all(0.0 <= v <= 3.0 for v in values)


def test_roc_auc_and_confusion_helpers():
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1], [1]) == 0.5
    assert roc_auc([0.2, 0.9], [0.5]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([], [1])
    assert confusion_matrix([0, 1, 1], [0, 1, 0], 2).tolist() == [[1, 0], [1, 1]]
