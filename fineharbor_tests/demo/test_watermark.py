"""The demo's watermark detector: trained on generator-drawn images (never the demo's), exported
as TorchScript that the pwatermark loader reads, and scored on planted watermarks from
scored_samples against the ground truth."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fineharbor.core.pipeline import SCORED
from fineharbor.core.quality.metrics import roc_auc
from fineharbor.core.quality.params import SignalParams
from fineharbor.core.quality.signals import WatermarkScorer
from fineharbor.core.storage import Storage
from fineharbor.demo import images as demo_images
from fineharbor.demo.generate import GT_SCHEMA, pretraining_corpus
from fineharbor.demo.watermark import (
    DemoWatermarkConfig,
    planted_watermark_auc,
    train_demo_watermark,
    training_images,
)


def test_watermarks_are_drawn_deterministically_and_visibly():
    ((data, _),) = pretraining_corpus(1, 5)
    image = demo_images.decode(data)
    first = demo_images.watermark(image, np.random.default_rng(3))
    again = demo_images.watermark(image, np.random.default_rng(3))
    assert first[1] == again[1] and first[1].split(":")[0] in ("text", "logo")
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    changed = np.abs(np.asarray(first[0], np.int16) - np.asarray(image, np.int16)).max(axis=2)
    assert (changed > 20).sum() > 50  # a visible mark, not noise
    assert first[0].size == image.size


def test_a_tiny_detector_exports_through_the_pwatermark_loader(tmp_path):
    config = DemoWatermarkConfig(image_size=32, images=2, steps=3, batch_size=4, width=4)
    report = train_demo_watermark(tmp_path / "wm.torchscript.pt", seed=0, config=config)
    assert report.images == 16 and report.steps == 3 and 0 <= report.train_accuracy <= 1
    params = SignalParams(
        watermark_path=str(tmp_path / "wm.torchscript.pt"), watermark_image_size=32
    )
    data = [d for d, _ in pretraining_corpus(2, 9)]
    scores = WatermarkScorer(params).score(data)
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    assert not list(tmp_path.glob(".*staging"))


def _scored(storage: Storage, source: str, keys: list[str], scores: list[float | None]) -> None:
    schema = pa.schema([("origin_key", pa.string()), ("pwatermark", pa.float32())])
    with storage.writer(SCORED, source, schema) as writer:
        writer.write(pa.table({"origin_key": keys, "pwatermark": scores}, schema=schema))


def test_planted_auc_compares_watermarks_with_clean_samples_of_their_sources(tmp_path):
    storage = Storage(str(tmp_path / "home"))
    _scored(storage, "wds", ["a", "b", "c", "d", "e"], [0.9, 0.2, 0.95, 0.4, None])
    _scored(storage, "charts", ["x"], [0.99])  # no planted watermark there: not a negative
    truth = [
        {"source": "wds", "origin_key": "a", "defect": "watermark"},
        {"source": "wds", "origin_key": "c", "defect": "watermark"},
        {"source": "wds", "origin_key": "d", "defect": "mismatched_caption"},  # neither side
        {"source": "wds", "origin_key": "e", "defect": "watermark"},  # null score: left out
    ]
    path = tmp_path / "ground_truth.parquet"
    pq.write_table(pa.Table.from_pylist(truth, schema=GT_SCHEMA), path)
    result = planted_watermark_auc(storage, path)
    assert (result.watermarked, result.clean) == (2, 1) and result.auc == 1.0
    _scored(storage, "wds", ["a", "b"], [None, None])
    assert planted_watermark_auc(storage, path) is None  # no watermark model: nothing to say


@pytest.mark.slow
def test_the_default_detector_separates_held_out_watermarks(tmp_path):
    """The shipped configuration on images it never saw (another seed): ROC AUC >= 0.9."""
    config = DemoWatermarkConfig()
    train_demo_watermark(tmp_path / "wm.torchscript.pt", seed=0, config=config)
    pixels, labels = training_images(40, 123, config.image_size, variants=1)
    params = SignalParams(
        watermark_path=str(tmp_path / "wm.torchscript.pt"), watermark_image_size=config.image_size
    )
    scores = WatermarkScorer(params).score(
        [demo_images.encode(Image.fromarray(p), "png") for p in pixels]
    )
    auc = roc_auc(scores[labels == 0], scores[labels == 1])
    print(f"held-out watermark ROC AUC {auc:.3f}")
    assert auc >= 0.9
