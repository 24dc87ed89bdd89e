"""The demo's comparison of UniFilter's two classifier architectures on the planted defects: the
AUCs on hand-set scores, and the whole comparison on a tiny generated project (the configured
classifier's scores in scored_samples, the tiny MLLM trained and scoring here)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fineharbor.core.config import parse_config
from fineharbor.core.interleaved import document_segments, document_turns
from fineharbor.core.pipeline import DECONTAMINATED, QUALITY_MODEL, SCORED
from fineharbor.core.schema import UNIFIED_SCHEMA, make_sample_id
from fineharbor.core.storage import Storage
from fineharbor.demo.documents import SHUFFLED
from fineharbor.demo.documents import SOURCE as DOCUMENTS
from fineharbor.demo.generate import GT_SCHEMA
from fineharbor.demo.unifilter import (
    MISMATCH,
    ClassifierAuc,
    Comparison,
    Planted,
    classifier_aucs,
    compare_classifiers,
    planted,
    print_comparison,
)

CAPTIONS = "captions"
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
}


def _png(colour: str, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_aucs_per_kind_over_the_sources_it_is_planted_in():
    truth = Planted(
        sources={"mismatched captions": {CAPTIONS}, "bad documents": {DOCUMENTS}},
        bad={"mismatched captions": {"c1"}, "bad documents": {"d1", "d2"}},
    )
    scores = {"c0": 2.0, "c1": 1.0, "c2": 0.5, "d0": 3.0, "d1": 1.0, "d2": None, "x": 0.0}
    source_of = {k: CAPTIONS if k[0] == "c" else DOCUMENTS for k in scores} | {"x": "other"}
    captions, documents = classifier_aucs("clip_mlp", scores, source_of, truth)
    # c1 ranks above c2: half the pairs; "x" is in no planted source, d2 unscored
    assert (captions.kind, captions.auc, captions.good, captions.bad) == (
        "mismatched captions",
        0.5,
        2,
        1,
    )
    assert (documents.auc, documents.good, documents.bad) == (1.0, 1, 1)
    assert classifier_aucs("none", {"c0": None}, source_of, truth) == []


def _project(tmp_path):
    """Two train sources with planted defects: 12 colour-square captions (2 mismatched) and 8
    two-image documents (2 with their images shuffled), decontaminated and scored."""
    storage = Storage(str(tmp_path / "home"))
    names = list(COLOURS)
    rows, truth, scores = [], [], []
    for i in range(12):
        colour = names[i % 4]
        said = names[(i + 1) % 4] if i in (3, 8) else colour
        rows.append(
            {
                "sample_id": make_sample_id(CAPTIONS, str(i)),
                "source": CAPTIONS,
                "origin_key": str(i),
                "images": [{"bytes": _png(colour, 24 + i), "path": None}],
                "texts": [{"user": "", "assistant": f"A {said} square."}],
            }
        )
        truth.append(
            {
                "source": CAPTIONS,
                "origin_key": str(i),
                "defect": MISMATCH if said != colour else None,
            }
        )
    for i in range(8):
        first, second = names[i % 4], names[(i + 2) % 4]
        images = [_png(first, 30 + i), _png(second, 30 + i)]
        if i in (2, 5):
            images.reverse()
        texts = ["Photos.", None, f"A {first} square.", None, f"A {second} square."]
        segments = document_segments(texts, 2)
        rows.append(
            {
                "sample_id": make_sample_id(DOCUMENTS, f"doc-{i}"),
                "source": DOCUMENTS,
                "origin_key": f"doc-{i}",
                "images": [{"bytes": b, "path": None} for b in images],
                "texts": document_turns(segments),
                "segments": segments,
            }
        )
        truth.append(
            {
                "source": DOCUMENTS,
                "origin_key": f"doc-{i}",
                "defect": SHUFFLED if i in (2, 5) else None,
            }
        )
    for row, fact in zip(rows, truth, strict=True):
        # the configured classifier's scores: every planted row below every good one
        scores.append(
            {
                "sample_id": row["sample_id"],
                "source": row["source"],
                "quality_score": 0.5 if fact["defect"] else 2.5,
            }
        )
    schema = pa.schema(
        [("sample_id", pa.string()), ("source", pa.string()), ("quality_score", pa.float32())]
    )
    for source in (CAPTIONS, DOCUMENTS):
        mine = pa.Table.from_pylist(
            [r for r in rows if r["source"] == source], schema=UNIFIED_SCHEMA
        )
        with storage.writer(DECONTAMINATED, source, UNIFIED_SCHEMA) as writer:
            writer.write(mine)
        with storage.writer(SCORED, source, schema) as writer:
            writer.write(
                pa.Table.from_pylist([s for s in scores if s["source"] == source], schema=schema)
            )
    pq.write_table(pa.Table.from_pylist(truth, schema=GT_SCHEMA), tmp_path / "truth.parquet")
    config = parse_config(
        {
            "sources": [
                {"name": CAPTIONS, "reader": "image_folder", "location": "caps"},
                {"name": DOCUMENTS, "reader": "interleaved", "location": "docs"},
            ],
            "stages": {QUALITY_MODEL: {"holdout_fraction": 0.25}},
        },
        tmp_path,
    )
    return config, storage


def test_the_comparison_prints_one_row_per_classifier(capsys):
    aucs = [
        ClassifierAuc("clip_mlp (configured)", "mismatched captions", 0.9, 10, 2),
        ClassifierAuc("clip_mlp (configured)", "bad documents", 0.75, 6, 2),
        ClassifierAuc("mllm (tiny SigLIP + Qwen2)", "bad documents", 0.625, 6, 2),
    ]
    heldout = {"clip_mlp (configured)": (0.8, 0.25), "mllm (tiny SigLIP + Qwen2)": (None, None)}
    print_comparison(Comparison(aucs, heldout, 12.34, 1.5, 20))
    lines = capsys.readouterr().out.splitlines()
    configured = next(line for line in lines if line.startswith("clip_mlp (configured)"))
    assert configured.split()[2:] == [
        "0.800",
        "0.250",
        "0.900",
        "(10",
        "vs",
        "2)",
        "0.750",
        "(6",
        "vs",
        "2)",
    ]
    mllm = next(line for line in lines if line.startswith("mllm (tiny"))
    assert mllm.split()[5:] == ["n/a", "n/a", "n/a", "0.625", "(6", "vs", "2)"]
    assert "mllm: trained in 12.3s, scored 20 samples in 1.5s" in lines[-1]


@pytest.mark.slow
def test_both_classifiers_are_compared_on_a_tiny_project(tmp_path, capsys):
    """The configured scores come from scored_samples; the tiny MLLM trains on the captions and
    documents and scores every row of both sources."""
    config, storage = _project(tmp_path)
    truth = planted(tmp_path / "truth.parquet")
    assert truth.sources == {"mismatched captions": {CAPTIONS}, "bad documents": {DOCUMENTS}}
    result = compare_classifiers(config, storage, tmp_path / "truth.parquet", tmp_path / "models")
    by = {(a.classifier, a.kind): a for a in result.aucs}
    configured, mllm = "clip_mlp (configured)", "mllm (tiny SigLIP + Qwen2)"
    assert list(result.heldout) == [configured, mllm]
    assert result.heldout[configured] == (None, None)  # nothing published: no held-out figures
    assert by[configured, "mismatched captions"].auc == 1.0
    assert (by[configured, "bad documents"].good, by[configured, "bad documents"].bad) == (6, 2)
    for kind, good in (("mismatched captions", 10), ("bad documents", 6)):
        assert (by[mllm, kind].good, by[mllm, kind].bad) == (good, 2)
        assert 0.0 <= by[mllm, kind].auc <= 1.0
    assert result.scored == 20 and result.heldout[mllm][0] is not None
    # its held-out split is the configured classifier's: whole images, a quarter of 20
    assert (tmp_path / "models" / "tiny-qwen2").is_dir()
