"""UniFilter's two classifier architectures side by side on the demo's planted defects.

After the pipeline has run, `fineharbor demo` compares the configured classifier (the CLIP-MLP
of ``stages.quality_classifier``, its scores in ``scored_samples.quality_score``) with the
published architecture (vision tower + AvgPool projector + causal LM) built from a tiny config
with random weights (:func:`fineharbor.testing.unifilter.save_tiny_mllm`: SigLIP on 32 px
images, a 2-layer Qwen2) and trained here, offline, in well under a minute on 2 cores.

Both learn from one semi-synthetic set, built as ``quality_classifier`` builds it (the same
train sources, seed and ``max_training_samples``), so both hold out the same images
(:func:`fineharbor.core.quality.mllm_classifier.heldout_examples`). The tiny model trains on at
most :data:`DEMO_TRAINING_EXAMPLES` of the other examples (a few hundred optimiser steps). Both
are then measured the same way: ROC AUC of the good rows above the planted ones, for the
``mismatched_caption`` samples (against the other rows of their sources) and for the
``web_documents`` bad documents.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.pipeline import DECONTAMINATED, SCORED
from fineharbor.core.schema import make_sample_id
from fineharbor.core.stored import read_stage_rows
from fineharbor.demo.documents import DOCUMENT_DEFECTS

MISMATCH = "mismatched_caption"
KINDS = {"mismatched captions": (MISMATCH,), "bad documents": DOCUMENT_DEFECTS}
"""What is compared: a name and the ground truth's defect codes it covers."""
DEMO_MLLM = {
    "visual_tokens": 4,
    "max_length": 160,
    "epochs": 1,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "device": "cpu",
}
"""The tiny classifier's training: one pass at a learning rate for random weights."""
DEMO_TRAINING_EXAMPLES = 3200


@dataclass(frozen=True)
class ClassifierAuc:
    """ROC AUC of one classifier's scores: good rows above planted ones (1.0: all of them)."""

    classifier: str
    kind: str
    auc: float
    good: int
    bad: int


@dataclass(frozen=True)
class Planted:
    """Per kind of :data:`KINDS`: the sources it is planted in and its planted sample ids."""

    sources: dict[str, set[str]]
    bad: dict[str, set[str]]


def planted(truth_path: str | Path) -> Planted:
    truth = pq.read_table(truth_path, columns=["source", "origin_key", "defect"]).to_pylist()
    sources: dict[str, set[str]] = {kind: set() for kind in KINDS}
    bad: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for row in truth:
        for kind, defects in KINDS.items():
            if row["defect"] in defects:
                sources[kind].add(row["source"])
                bad[kind].add(make_sample_id(row["source"], row["origin_key"]))
    return Planted(sources, bad)


def classifier_aucs(
    classifier: str,
    scores: Mapping[str, float | None],
    source_of: Mapping[str, str],
    truth: Planted,
) -> list[ClassifierAuc]:
    """Per kind with good and planted rows scored: the AUC over the rows (``scores`` by sample
    id, None where unscored) of the sources the kind is planted in."""
    from fineharbor.core.quality.metrics import roc_auc

    out = []
    for kind in KINDS:
        rows = [
            (i, v)
            for i, v in scores.items()
            if v is not None and source_of[i] in truth.sources[kind]
        ]
        good = [v for i, v in rows if i not in truth.bad[kind]]
        bad = [v for i, v in rows if i in truth.bad[kind]]
        if good and bad:
            out.append(ClassifierAuc(classifier, kind, roc_auc(good, bad), len(good), len(bad)))
    return out


def _rows(storage, asset: str, sources: set[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
    for source in sorted(sources):
        if storage.has_partition(asset, source):
            yield from read_stage_rows(storage, asset, source, columns=columns)


def train_demo_mllm(config, storage, root: Path):
    """The tiny MLLM-backbone classifier, trained on the pipeline's semi-synthetic set (module
    docstring); returns it with its report (held-out figures over the CLIP-MLP's split)."""
    from fineharbor.core.quality.classifier import QualityTrainingSet, build_quality_training_set
    from fineharbor.core.quality.mllm_classifier import heldout_examples, train_mllm_classifier
    from fineharbor.core.quality.params import MllmClassifierParams
    from fineharbor.core.quality.stage import train_samples
    from fineharbor.testing.unifilter import save_tiny_mllm

    params = config.stages.quality_classifier
    vision, lm = save_tiny_mllm(root)
    _, batches = train_samples(config, storage, params.max_training_samples)
    full = build_quality_training_set(
        batches, seed=params.seed, max_samples=params.max_training_samples
    )
    if len(full.images) < 2:
        raise ValueError("no decontaminated train samples to train on: run the pipeline first")
    held = heldout_examples(full, params.holdout_fraction, params.seed)
    train = np.flatnonzero(~held)
    rng = np.random.default_rng(params.seed)
    if len(train) > DEMO_TRAINING_EXAMPLES:
        train = np.sort(rng.choice(train, DEMO_TRAINING_EXAMPLES, replace=False))
    keep = np.sort(np.concatenate([train, np.flatnonzero(held)]))
    # images stay as they are, so the held-out images are the CLIP-MLP's
    subset = QualityTrainingSet(full.images, full.examples.take(pa.array(keep)))
    mllm = MllmClassifierParams(vision_model=str(vision), language_model=str(lm), **DEMO_MLLM)
    return train_mllm_classifier(
        subset, mllm, holdout_fraction=params.holdout_fraction, seed=params.seed
    )


@dataclass
class Comparison:
    aucs: list[ClassifierAuc]
    # per classifier, in the order printed: (held-out accuracy, held-out MAE)
    heldout: dict[str, tuple[float | None, float | None]]
    train_seconds: float
    score_seconds: float
    scored: int


def compare_classifiers(config, storage, truth_path: str | Path, root: Path) -> Comparison:
    """Both classifiers' AUCs on the planted defects (module docstring)."""
    from fineharbor.core.quality.stage import load_quality_model

    truth = planted(truth_path)
    sources = set().union(*truth.sources.values())
    configured = f"{config.stages.quality_classifier.architecture} (configured)"
    scores: dict[str, float | None] = {}
    source_of: dict[str, str] = {}
    for batch in _rows(storage, SCORED, sources, ["sample_id", "source", "quality_score"]):
        for row in batch.to_pylist():
            scores[row["sample_id"]] = row["quality_score"]
            source_of[row["sample_id"]] = row["source"]
    try:
        report = load_quality_model(storage).report
    except FileNotFoundError:  # no scoring CLIP: nothing was trained, its scores are null
        report = None
    heldout = {configured: (None, None)}
    if report is not None:
        heldout[configured] = (report.heldout_accuracy, report.heldout_mae)

    started = time.perf_counter()
    model = train_demo_mllm(config, storage, root)
    train_seconds = time.perf_counter() - started
    name = "mllm (tiny SigLIP + Qwen2)"
    assert model.report is not None
    heldout[name] = (model.report.heldout_accuracy, model.report.heldout_mae)
    started = time.perf_counter()
    mllm_scores: dict[str, float | None] = {}
    columns = ["sample_id", "source", "images", "texts", "segments"]
    for batch in _rows(storage, DECONTAMINATED, sources, columns):
        ids = batch.column("sample_id").to_pylist()
        mllm_scores.update(zip(ids, model.score_samples(batch).to_pylist(), strict=True))
        source_of.update(zip(ids, batch.column("source").to_pylist(), strict=True))
    score_seconds = time.perf_counter() - started
    aucs = classifier_aucs(configured, scores, source_of, truth)
    aucs += classifier_aucs(name, mllm_scores, source_of, truth)
    return Comparison(aucs, heldout, train_seconds, score_seconds, len(mllm_scores))


def print_comparison(result: Comparison) -> None:
    """The comparison as `fineharbor demo` prints it: one row per classifier."""
    from fineharbor.cli import print_table

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print("\nUniFilter classifiers on the planted defects (ROC AUC, good above planted):")
    rows = []
    for name, (accuracy, mae) in result.heldout.items():
        aucs = {a.kind: a for a in result.aucs if a.classifier == name}
        row = [name, cell(accuracy), cell(mae)]
        for kind in KINDS:
            a = aucs.get(kind)
            row.append("n/a" if a is None else f"{a.auc:.3f} ({a.good} vs {a.bad})")
        rows.append(row)
    print_table(["classifier", "held-out acc", "held-out MAE", *KINDS], rows)
    print(
        f"mllm: trained in {result.train_seconds:.1f}s, scored {result.scored} samples in "
        f"{result.score_seconds:.1f}s (same semi-synthetic set and held-out images as the "
        "configured classifier)"
    )
