"""The demo's interleaved source: every planted bad document is what the ground truth says, and
the source reads whole through the interleaved reader."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from fineharbor.core.config import IngestParams, parse_config
from fineharbor.core.pipeline import SCORED
from fineharbor.core.readers import read_source
from fineharbor.demo.documents import (
    _BOILERPLATE,
    BOILERPLATE,
    DOCUMENT_DEFECTS,
    FILE_NAME,
    SHUFFLED,
    UNRELATED,
    build_documents,
    write_documents,
)
from fineharbor.demo.generate import _Generator


def _clean(g: _Generator, index: int, defect: str | None) -> tuple[list[bytes], list[str]]:
    """The document as drawn before any defect: the same seeded draws from a generator that
    has drawn the same scenes before (it never repeats a scene)."""
    rng = g.rng("documents", index)
    visuals = [g.clean_visual(rng, "scene") for _ in range(int(rng.integers(2, 4)))]
    captions = [g.caption_for(v.content, rng) for v in visuals]
    if defect == UNRELATED:
        for _ in visuals:
            g.clean_visual(rng, "scene")
    return [v.data for v in visuals], captions


@pytest.mark.slow
def test_planted_documents_are_what_the_truth_says(tmp_path):
    g = _Generator(0, 1.0, "")
    rows = build_documents(g, 8, dict.fromkeys(DOCUMENT_DEFECTS, 0.1))
    replay = _Generator(0, 1.0, "")
    assert sorted(r["_defect"] for r in rows if r["_defect"]) == sorted(DOCUMENT_DEFECTS)
    for index, row in enumerate(rows):
        images = [im["bytes"] for im in row["images"] if im is not None]
        texts = [t for t in row["texts"] if t is not None][1:]  # after the title
        assert row["texts"][0] is not None and row["images"][0] is None
        assert [im is None for im in row["images"]] == [t is not None for t in row["texts"]]
        defect = row["_defect"]
        clean_images, captions = _clean(replay, index, defect)
        if defect == BOILERPLATE:
            fragments = {f for t in texts for f in _BOILERPLATE if f in t}
            assert images == clean_images and len(fragments) == 3 * len(texts)
        elif defect == SHUFFLED:
            assert texts == captions and images == clean_images[1:] + clean_images[:1]
        elif defect == UNRELATED:
            assert texts == captions and not set(images) & set(clean_images)
        else:
            assert (images, texts) == (clean_images, captions)

    write_documents(tmp_path / "docs", rows)
    assert "_defect" not in pq.read_schema(tmp_path / "docs" / FILE_NAME).names
    config = {"name": "docs", "reader": "interleaved", "location": "docs"}
    config["mapping"] = {"origin_key": "id"}
    source = parse_config({"sources": [config]}, tmp_path).sources[0]
    kept = rejected = 0
    for k, r in read_source(source, IngestParams()):
        kept, rejected = kept + k.num_rows, rejected + r.num_rows
    assert (kept, rejected) == (8, 0)


def test_planted_document_aucs_rank_bad_documents_from_scored_samples(tmp_path):
    import pyarrow as pa

    from fineharbor.core.schema import make_sample_id
    from fineharbor.core.storage import Storage
    from fineharbor.demo.documents import SOURCE, planted_document_aucs
    from fineharbor.demo.generate import GT_SCHEMA

    truth = [
        {"source": SOURCE, "origin_key": key, "defect": defect}
        for key, defect in (("doc-00001", SHUFFLED), ("doc-00003", BOILERPLATE))
    ]
    truth.append({"source": "other", "origin_key": "doc-00000", "defect": "watermark"})
    pq.write_table(pa.Table.from_pylist(truth, schema=GT_SCHEMA), tmp_path / "truth.parquet")
    storage = Storage(str(tmp_path / "home"))
    schema = pa.schema(
        [("sample_id", pa.string()), ("quality_score", pa.float32()), ("clip_score", pa.float32())]
    )
    scores = [2.5, 0.5, 2.0, 1.0, None]  # doc-00001 and doc-00003 are the planted ones
    rows = [
        {
            "sample_id": make_sample_id(SOURCE, f"doc-{i:05d}"),
            "quality_score": s,
            "clip_score": None,
        }
        for i, s in enumerate(scores)
    ]
    with storage.writer(SCORED, SOURCE, schema) as writer:
        writer.write(pa.Table.from_pylist(rows, schema=schema))
    (result,) = planted_document_aucs(storage, tmp_path / "truth.parquet")
    assert (result.column, result.auc, result.good, result.bad) == ("quality_score", 1.0, 2, 2)
