"""A dense templated neighbourhood: distinct charts from one template (same axes, palette and
layout; a bar height and the title's number change) are never merged, while their resized,
JPEG and mirrored copies still join their originals.

The charts are :func:`fineharbor.testing.copies.templated_charts`, as in the pipeline
benchmark's dense neighbourhood, and go through the real stage functions with hash signals only.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from fineharbor.core.dedup import DedupParams, compact_samples, find_duplicates
from fineharbor.core.dedup.verify import (
    PairVerifier,
    batches_thumbnail_loader,
    detail_residual,
    detail_view,
    thumbnail,
)
from fineharbor.core.signatures import SignatureParams, compute_signatures
from fineharbor.testing.copies import templated_charts

HASH_ONLY = {"copy_embedding": False, "phash_verify_min_cosine": None}
CHARTS = 40
COPIED = 8  # charts of which each copy below is planted


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _copies(chart: Image.Image) -> dict[str, bytes]:
    w, h = chart.size
    return {
        "half": _encode(chart.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "PNG"),
        "jpeg40": _encode(chart, "JPEG", quality=40),
        "flip": _encode(chart.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
    }


@pytest.fixture(scope="module")
def corpus():
    charts = templated_charts(CHARTS, seed=0)
    files = {f"chart{k:03d}": _encode(chart, "PNG") for k, chart in enumerate(charts)}
    original_of = {}
    for k, chart in enumerate(charts[:COPIED]):
        for kind, data in _copies(chart).items():
            files[f"chart{k:03d}_{kind}"] = data
            original_of[f"chart{k:03d}_{kind}"] = f"chart{k:03d}"
    batch = pa.RecordBatch.from_pylist(
        [
            {
                "sample_id": name,
                "source": "charts",
                "origin_uri": None,
                "origin_key": name,
                "images": [{"bytes": data, "path": name}],
                "texts": [],
            }
            for name, data in files.items()
        ]
    )
    signatures = pa.concat_tables(
        list(compute_signatures([batch], SignatureParams(num_workers=0, batch_size=32)))
    )
    return {
        "charts": charts,
        "original_of": original_of,
        "signatures": signatures,
        "samples": compact_samples([batch]),
        "loader": batches_thumbnail_loader(lambda: iter([batch])),
    }


def _cluster_of(corpus, **params) -> tuple[dict[str, str], dict]:
    clusters, report = find_duplicates(
        corpus["signatures"],
        corpus["samples"],
        DedupParams(**{**HASH_ONLY, **params}),
        {},
        thumbnails=corpus["loader"],
    )
    ids = clusters.column("sample_id").to_pylist()
    return dict(zip(ids, clusters.column("cluster_id").to_pylist(), strict=True)), report


@pytest.mark.slow
def test_templated_charts_stay_apart_and_their_copies_join_them(corpus):
    cluster_of, report = _cluster_of(corpus)
    charts = [f"chart{k:03d}" for k in range(CHARTS)]
    merged = [
        (a, b)
        for a, b in itertools.combinations(charts, 2)
        if a in cluster_of and cluster_of.get(a) == cluster_of.get(b)
    ]
    assert merged == []
    for copy, original in corpus["original_of"].items():
        assert original in cluster_of and cluster_of.get(copy) == cluster_of[original], copy
    # the phash proposed look-alikes that only the detail check told apart
    assert report["verification"]["refuted_by_detail"] > 0
    # without the detail check the same candidates merge distinct charts
    loose, _ = _cluster_of(corpus, verify_max_detail_residual=None)
    assert any(loose.get(a) == loose.get(b) for a, b in itertools.combinations(charts, 2)
               if a in loose)  # fmt: skip


def test_detail_residual_separates_look_alikes_from_copies(corpus):
    charts = corpus["charts"][:12]
    views = [detail_view(c, 512) for c in charts]
    verifier = PairVerifier(lambda keys: {k: thumbnail(charts[k[1]], 64) for k in keys})
    pairs = [(("c", a), ("c", b)) for a, b in itertools.combinations(range(len(charts)), 2)]
    confirmed = [p for p, ok in zip(pairs, verifier.check(pairs), strict=True) if ok]
    assert confirmed  # the 64 px thumbnails alone confirm some look-alikes
    look_alikes = [detail_residual(views[a[1]], views[b[1]], 0) for a, b in confirmed]
    copies = []
    for chart, view in zip(charts[:4], views, strict=False):
        for kind, data in _copies(chart).items():
            copy = detail_view(Image.open(io.BytesIO(data)).convert("RGB"), 512)
            copies.append(detail_residual(view, copy, 4 if kind == "flip" else 0))
    params = DedupParams()

    def refuted(worst: float, contrast: float) -> bool:
        return (
            worst > params.verify_max_detail_residual
            and contrast > params.verify_min_detail_contrast
        )

    assert not any(refuted(*c) for c in copies), copies
    assert all(refuted(*c) for c in look_alikes), look_alikes
    assert np.isfinite(look_alikes).all()
