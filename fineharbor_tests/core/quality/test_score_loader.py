"""scored_samples feeds every model through the signature stage's prefetching loader: scores
equal the in-process path (each model decoding its own bytes) with and without loader workers,
on rows whose images are stored by another stage, with a broken image among them."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch

from fineharbor.core.cleaning.stage import CLEANED_SCHEMA
from fineharbor.core.config import load_config
from fineharbor.core.pipeline import DECONTAMINATED, SCORED
from fineharbor.core.quality.classifier import (
    build_quality_training_set,
    score_quality,
    train_quality_classifier,
)
from fineharbor.core.quality.clip_score import clip_scores, load_clip_embedder
from fineharbor.core.quality.faces import FaceDetector, face_columns
from fineharbor.core.quality.mllm_classifier import build_mllm_classifier
from fineharbor.core.quality.params import QualityClassifierParams
from fineharbor.core.quality.pixels import (
    MLLM_VISION,
    BatchPixels,
    batch_images,
    prepared_batches,
)
from fineharbor.core.quality.signals import (
    SignalModels,
    WatermarkScorer,
    load_aesthetic_head,
    load_nsfw_head,
    signal_columns,
)
from fineharbor.core.quality.stage import ScoringModels, build_scored_samples, image_prep
from fineharbor.core.schema import make_sample_id
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows, read_stage_table
from fineharbor.testing.signals import (
    draw_face,
    save_head,
    save_tiny_watermark_torchscript,
    tiny_aesthetic,
    tiny_nsfw,
)
from fineharbor.testing.stored import write_kept_rows
from fineharbor.testing.unifilter import save_tiny_mllm
from fineharbor_tests.core.cleaning.helpers import encode, scene

from .test_classifier import _toy_samples
from .test_mllm_classifier import tiny_params

PROJECT = """
sources:
  - {{name: photos, reader: image_folder, location: photos, mapping: {{caption: txt}}}}
stages:
  clip_score: {{model: "local-dir:{clip}", pretrained: null, batch_size: 4,
                num_workers: {workers}, prefetch_factor: 2}}
  signals: {{faces: true, watermark_image_size: 64}}
"""
BROKEN = b"\xff\xd8\xff\xe0 not a JPEG after all"
COLUMNS = ("clip_score", "quality_score", "punsafe", "aesthetic_score", "pwatermark")


def _rows() -> pa.Table:
    """Photos (one repeated in two rows), a drawn face, a broken image alone and next to a good
    one, and a row without images."""
    photos = [encode(scene(96, 64, i), "JPEG") for i in range(7)]
    face = encode(draw_face(), "PNG")
    images = [
        *[[p] for p in photos],
        [photos[2]],
        [face],
        [BROKEN],
        [BROKEN, photos[4]],
        [],
    ]
    rows = [
        {
            "sample_id": make_sample_id("photos", str(i)),
            "source": "photos",
            "images": [{"bytes": b, "path": f"{i}-{k}.jpg"} for k, b in enumerate(imgs)],
            "texts": [{"user": "", "assistant": f"A scene number {i} with shapes on a gradient."}],
            "origin_uri": f"file:///photos/{i}",
            "origin_key": str(i),
            "image_info": [],
            "dropped_turns": 0,
        }
        for i, imgs in enumerate(images)
    ]
    return pa.Table.from_pylist(rows, schema=CLEANED_SCHEMA)


@pytest.fixture(scope="module")
def scoring(tiny_clip_dir, tmp_path_factory):
    """The scoring CLIP, a classifier on it, and every signal model (the heads on a second CLIP
    instance, so it is prepared and embedded on its own)."""
    root = tmp_path_factory.mktemp("score_loader")
    config_path = root / "fineharbor.yaml"
    config_path.write_text(PROJECT.format(clip=tiny_clip_dir, workers=0))
    config = load_config(config_path)
    embedder = load_clip_embedder(config.stages.clip_score)
    data = build_quality_training_set(_toy_samples(12), seed=0)
    model = train_quality_classifier(
        data, embedder, QualityClassifierParams(hidden=16, epochs=2, batch_size=16)
    )
    save_tiny_watermark_torchscript(root / "watermark.pt")
    signals = SignalModels(
        embedder=load_clip_embedder(config.stages.clip_score),
        nsfw=load_nsfw_head(save_head(tiny_nsfw(embedder.dim), root / "nsfw.pth")),
        aesthetic=load_aesthetic_head(save_head(tiny_aesthetic(embedder.dim), root / "a.pth")),
        watermark=WatermarkScorer(
            config.stages.signals.model_copy(update={"watermark_path": str(root / "watermark.pt")})
        ),
        faces=FaceDetector(),
    )
    return root, embedder, model, signals


def _in_process(table: pa.Table, config, embedder, model, signals: SignalModels) -> dict:
    """Each model decoding the bytes itself (the path before the loader)."""
    return {
        "clip_score": clip_scores(table, embedder, config.stages.clip_score),
        "quality_score": score_quality(table, model, embedder),
        **signal_columns(table, signals),
        **face_columns(table, signals.faces),
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_the_stage_scores_through_the_loader_as_in_process(scoring, tiny_clip_dir, workers):
    root, embedder, model, signals = scoring
    project = root / f"workers{workers}.yaml"
    project.write_text(PROJECT.format(clip=tiny_clip_dir, workers=workers))
    config = load_config(project)
    storage = Storage(str(root / f"home{workers}"))
    # the rows live in cleaned_samples; decontaminated_samples holds only their ids
    write_kept_rows(storage, DECONTAMINATED, "photos", _rows())
    assert "images" not in storage.read_table(DECONTAMINATED, "photos").column_names

    report, stats = build_scored_samples(
        config, "photos", storage, embedder=embedder, model=model, signals=signals
    )
    assert report.conserved and report.kept == 12 and report.rejected == 0
    scored = read_stage_table(storage, SCORED, "photos")
    expected = _in_process(
        read_stage_table(storage, DECONTAMINATED, "photos"), config, embedder, model, signals
    )
    for name in COLUMNS:
        got, want = scored.column(name).to_pylist(), expected[name].to_pylist()
        assert [v is None for v in got] == [v is None for v in want], name
        np.testing.assert_allclose(
            [v for v in got if v is not None], [v for v in want if v is not None], rtol=1e-5
        )
    # the broken image alone nulls its row; next to a good image the good one is scored
    for name in COLUMNS:
        values = scored.column(name).to_pylist()
        assert values[9] is None and values[11] is None, name  # broken alone; no image
        assert values[10] is not None, name
    assert scored.column("face_count").to_pylist() == expected["face_count"].to_pylist()
    assert scored.column("face_boxes").to_pylist() == expected["face_boxes"].to_pylist()
    assert scored.column("face_count").to_pylist()[8] >= 1  # the drawn face
    assert scored.column("face_boxes").to_pylist()[9] == [[]]  # the broken image: no boxes
    assert len(stats.clip_scores) == 10


def test_rows_stay_in_order_with_their_images_and_workers_get_only_bytes(scoring, tmp_path):
    _, embedder, model, signals = scoring
    storage = Storage(str(tmp_path))
    write_kept_rows(storage, DECONTAMINATED, "photos", _rows())
    batches = list(read_stage_rows(storage, DECONTAMINATED, "photos", batch_size=5))
    prep, pin = image_prep(ScoringModels(embedder, model, signals))
    assert prep is not None and not pin  # a CPU run pins nothing
    pickle.loads(pickle.dumps(prep))  # what spawn/forkserver workers receive
    out = list(prepared_batches(iter(batches), prep, num_workers=0))
    assert [b for b, _ in out] == batches
    for batch, pixels in out:
        images = batch_images(batch)
        stack, ok = pixels.take("clip", images)
        decodable = [i for i, data in enumerate(images) if data != BROKEN]
        assert ok == decodable
        assert stack is not None and stack.shape[0] == len(decodable)
        np.testing.assert_allclose(
            pixels.embed("clip", images, embedder.embed_tensors, embedder.dim),
            embedder.embed_images(images),
            rtol=1e-5,
            atol=1e-6,
        )
    assert list(prepared_batches(iter(batches), None)) == [(b, None) for b in batches]


def test_the_mllm_scores_the_same_from_loader_pixels(tmp_path):
    torch.manual_seed(0)
    model = build_mllm_classifier(tiny_params(save_tiny_mllm(tmp_path), visual_tokens=4))
    table = _rows().select(["sample_id", "images", "texts"])
    prep, _ = image_prep(ScoringModels(model=model))
    assert prep is not None and MLLM_VISION in prep.transforms
    pixels = BatchPixels.here(batch_images(table), prep)
    through_loader = model.score_samples(table, pixels).to_pylist()
    in_process = model.score_samples(table).to_pylist()
    assert [v is None for v in through_loader] == [v is None for v in in_process]
    assert through_loader[9] is None and through_loader[10] is not None
    np.testing.assert_allclose(
        [v for v in through_loader if v is not None],
        [v for v in in_process if v is not None],
        rtol=1e-4,
        atol=1e-5,
    )
