"""The detail check streams the images as few times as its memory budget allows (once when
every view fits, not once per few hundred images), holds at most the budget's views, and gives
the same verdicts whatever the budget, the batching and the engine (in process, worker
processes, a mapper): those of comparing each confirmed pair's two detail views directly."""

from __future__ import annotations

import io
import itertools
import weakref

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from fineharbor.core.dedup import verify
from fineharbor.core.dedup.verify import (
    PairVerifier,
    batches_thumbnail_loader,
    detail_residual,
    detail_view,
    full_frame,
    is_colour,
    thumbnail,
    verify_stacks,
)
from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.distributed.tasks import TaskEngine, task_mapper
from fineharbor.core.pipeline import DUPLICATES
from fineharbor.testing.copies import encode, templated_charts

CHARTS = 40
DETAIL_SIZE = 512
VIEW_BYTES = DETAIL_SIZE * DETAIL_SIZE


def _copies(chart: Image.Image) -> dict[str, bytes]:
    w, h = chart.size
    return {
        "half": encode(chart.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "PNG"),
        "jpeg40": encode(chart, "JPEG", quality=40),
        "flip": encode(chart.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
    }


def _full_frame_pairs(thumbs: dict, keys: list) -> tuple[list, list]:
    """(pairs the full frame confirms, the others) of every two of ``keys``: the crop search
    of the refuted ones costs ~20 ms a pair, so the test takes all the first and a few of
    the others."""
    pairs = list(itertools.combinations(keys, 2))
    a = np.stack([thumbs[x].pixels for x, _ in pairs]).astype(np.float32)
    b = np.stack([thumbs[y].pixels for _, y in pairs]).astype(np.float32)
    ncc, worst, _ = full_frame(a, b, is_colour(a) & is_colour(b))
    confirmed = (ncc >= 0.90) & (worst <= 16.0)
    return [p for p, ok in zip(pairs, confirmed, strict=True) if ok], [
        p for p, ok in zip(pairs, confirmed, strict=True) if not ok
    ]


@pytest.fixture(scope="module")
def corpus():
    """Templated charts (look-alikes the thumbnails confirm) and real copies of a few, in four
    record batches; the candidates are every pair the full frame confirms, a few it does not
    and two with an image that does not decode."""
    files = {}
    for k, chart in enumerate(templated_charts(CHARTS, seed=3)):
        files[f"chart{k:02d}"] = encode(chart, "PNG")
        if k < 4:
            for kind, data in _copies(chart).items():
                files[f"chart{k:02d}_{kind}"] = data
    images = {
        (name, 0): Image.open(io.BytesIO(data)).convert("RGB") for name, data in files.items()
    }
    files["broken"] = b"not an image"
    rows = [
        {"sample_id": name, "images": [{"bytes": data, "path": None}]}
        for name, data in files.items()
    ]
    batches = [pa.RecordBatch.from_pylist(rows[k::4]) for k in range(4)]
    thumbs = {key: thumbnail(image, 64) for key, image in images.items()}
    confirmed, others = _full_frame_pairs(thumbs, sorted(thumbs))
    pairs = (
        confirmed
        + others[::97]
        + [(("broken", 0), ("chart00", 0)), (("chart01", 0), ("broken", 0))]
    )
    return {"images": images, "thumbs": thumbs, "batches": batches, "pairs": pairs}


class Counted:
    """``open_batches`` that counts how often the images are streamed."""

    def __init__(self, batches: list[pa.RecordBatch]) -> None:
        self.batches = batches
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return iter(self.batches)


def _expected(corpus) -> list[bool]:
    """Verdicts of the detail check done pair by pair: each full-frame-confirmed pair's two
    detail views compared directly (what the check computed before it had passes)."""
    thumbs = corpus["thumbs"]
    views = {key: detail_view(image, DETAIL_SIZE) for key, image in corpus["images"].items()}
    out = []
    for a, b in corpus["pairs"]:
        if a not in thumbs or b not in thumbs:
            out.append(True)  # unverifiable: stays a candidate
            continue
        aspects = np.array([[thumbs[a].aspect, thumbs[b].aspect]])
        passed, how, turn = verify_stacks(thumbs[a].pixels[None], thumbs[b].pixels[None], aspects)
        ok = bool(passed[0])
        if how[0] == 1:
            worst, contrast = detail_residual(views[a], views[b], int(turn[0]))
            ok = not (worst > 35.0 and contrast > 4.6)
        out.append(ok)
    return out


def _check(corpus, **options) -> tuple[list[bool], PairVerifier, Counted]:
    opened = Counted(corpus["batches"])
    verifier = PairVerifier(batches_thumbnail_loader(opened), detail_size=DETAIL_SIZE, **options)
    return verifier.check(corpus["pairs"]), verifier, opened


@pytest.fixture(scope="module")
def expected(corpus) -> list[bool]:
    return _expected(corpus)


def test_one_stream_when_the_budget_holds_every_view(corpus, expected):
    verdicts, verifier, opened = _check(corpus)
    assert verdicts == expected
    stats = verifier.stats()
    # the look-alikes the thumbnails confirmed are refuted; the copies are not
    assert stats["refuted_by_detail"] > 0
    # enough pairs for the worker pool (test below) and several batches
    assert stats["detail_checked"] >= verify.MIN_POOL_BATCHES * verify.DETAIL_BATCH
    assert stats["detail_passes"] == 1
    assert opened.calls == 2  # thumbnails once, detail views once


@pytest.mark.slow
def test_a_small_budget_takes_more_passes_with_the_same_verdicts(corpus, expected):
    """6 views a pass (of 52 images): several streams, in two worker processes, same
    verdicts."""
    verdicts, verifier, opened = _check(corpus, detail_budget_bytes=6 * VIEW_BYTES, workers=2)
    assert verdicts == expected
    passes = verifier.stats()["detail_passes"]
    assert passes > 1
    assert opened.calls == 1 + passes


def test_a_mapper_gets_the_detail_batches(corpus, expected):
    calls = []

    def mapper(fn, arguments):
        calls.append(fn.__name__)
        return [fn(*args) for args in arguments]

    verdicts, verifier, _ = _check(corpus, detail_budget_bytes=10 * VIEW_BYTES, mapper=mapper)
    assert verdicts == expected
    assert "detail_residuals" in calls and "verify_stacks" in calls
    assert verifier.stats()["detail_passes"] > 1


def test_a_pass_holds_at_most_its_budget(corpus, monkeypatch):
    """At most ``budget / detail_size**2`` views are alive while the stream is read (plus the
    one pair of a batch handed out, batches of one pair here)."""
    monkeypatch.setattr(verify, "DETAIL_BATCH", 1)
    loader = batches_thumbnail_loader(Counted(corpus["batches"]))
    alive: list[weakref.ref] = []
    most = []
    streamed = loader.details

    def details(keys, cap):
        for key, view in streamed(keys, cap):
            alive.append(weakref.ref(view))
            most.append(sum(ref() is not None for ref in alive))
            yield key, view

    loader.details = details
    verifier = PairVerifier(loader, detail_size=DETAIL_SIZE, detail_budget_bytes=4 * VIEW_BYTES)
    verifier.check(corpus["pairs"])
    assert verifier.stats()["detail_passes"] > 1
    assert 2 <= max(most) <= 4 + 2


@pytest.mark.slow
def test_the_detail_batches_run_as_ray_tasks(corpus, expected, ray_address):
    """On Ray (duplicate_clusters' ``mapper``), the detail batches are Ray tasks beside the
    thumbnail batches, with the same verdicts."""
    engine = TaskEngine(DUPLICATES, ExecutionParams(engine="ray", address=ray_address))
    verdicts, verifier, _ = _check(corpus, mapper=task_mapper(engine))
    assert verdicts == expected
    thumbnail_batches = -(-len(corpus["pairs"]) // verifier.batch_size)
    detail_batches = -(-verifier.stats()["detail_checked"] // verify.DETAIL_BATCH)
    assert engine.summary()["tasks"] == thumbnail_batches + detail_batches
