"""The image signals: each loader reads its published layout (tiny heads with random weights
saved and reloaded), the scoring stage fills one column each (null when not configured), and a
named but absent file is reported at config load with the field, the path and where to get it.

NSFW and aesthetics cannot be planted honestly in generated data: these tests check the
plumbing (the numbers a head computes reach the column, per-sample reductions, nulls)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from fineharbor.core import models
from fineharbor.core.cleaning.stage import CLEANED_SCHEMA
from fineharbor.core.config import load_config
from fineharbor.core.pipeline import DECONTAMINATED, SCORED
from fineharbor.core.quality.params import ClipScoreParams, SignalParams
from fineharbor.core.quality.signals import (
    SignalLoadError,
    SignalModels,
    WatermarkScorer,
    load_aesthetic_head,
    load_nsfw_head,
    load_signal_models,
    signal_columns,
)
from fineharbor.core.schema import make_sample_id
from fineharbor.core.signatures.embedders import SquareResize
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_table
from fineharbor.testing.signals import (
    save_head,
    save_tiny_laion_watermark,
    save_tiny_watermark_torchscript,
    tiny_aesthetic,
    tiny_nsfw,
)
from fineharbor.testing.stored import write_kept_rows
from fineharbor_tests.core.cleaning.helpers import encode, scene
from fineharbor_tests.core.quality.conftest import FakeEmbedder, png


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(
    "kind,build,load",
    [("aesthetic", tiny_aesthetic, load_aesthetic_head), ("nsfw", tiny_nsfw, load_nsfw_head)],
)
def test_heads_reload_from_the_published_layout(tmp_path, suffix, kind, build, load):
    torch.manual_seed(1)
    module = build(16)
    path = save_head(module, tmp_path / f"{kind}{suffix}")
    head = load(path)
    assert head.dim == 16
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32) * 3
    with torch.no_grad():
        expected = module(torch.from_numpy(_unit(x))).squeeze(-1).numpy()
    np.testing.assert_allclose(head.score(x), expected, rtol=1e-5, atol=1e-6)
    if kind == "nsfw":
        assert ((head.score(x) > 0) & (head.score(x) < 1)).all()


def test_a_head_of_the_wrong_shape_is_refused(tmp_path):
    torch.save({"layers.0.weight": torch.zeros(4, 16), "layers.2.weight": torch.zeros(1, 5)},
               tmp_path / "bad.pth")  # fmt: skip
    with pytest.raises(SignalLoadError, match="takes 5 inputs"):
        load_aesthetic_head(tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(1, 16)}, tmp_path / "none.pth")
    with pytest.raises(SignalLoadError, match=r"no layers\.N\.weight"):
        load_nsfw_head(tmp_path / "none.pth")


def _reference_pwatermark(model, images: list[bytes], size: int) -> np.ndarray:
    transform = SquareResize(size)
    pixels = torch.stack([transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in images])
    with torch.no_grad():
        return torch.softmax(model(pixels), dim=1)[:, 0].numpy()


def test_watermark_loader_reads_torchscript_and_laion_state_dicts(tmp_path):
    images = [encode(scene(80, 60, seed), "PNG") for seed in range(3)]
    scripted = save_tiny_watermark_torchscript(tmp_path / "wm.torchscript.pt")
    params = SignalParams(
        watermark_path=str(tmp_path / "wm.torchscript.pt"), watermark_image_size=64
    )
    scores = WatermarkScorer(params).score([*images, b"not an image"])
    np.testing.assert_allclose(scores[:3], _reference_pwatermark(scripted, images, 64), rtol=1e-4)
    assert np.isnan(scores[3])

    laion = save_tiny_laion_watermark(tmp_path / "watermark_model_v1.pt")
    params = SignalParams(
        watermark_path=str(tmp_path / "watermark_model_v1.pt"),
        watermark_arch="test_efficientnet",
        watermark_image_size=64,
    )
    scores = WatermarkScorer(params).score(images)
    np.testing.assert_allclose(scores, _reference_pwatermark(laion, images, 64), rtol=1e-4)
    wrong = params.model_copy(update={"watermark_arch": "test_resnet"})
    with pytest.raises(SignalLoadError, match="neither TorchScript nor a state_dict"):
        WatermarkScorer(wrong)


def test_columns_take_the_worst_image_and_are_null_without_images(tmp_path):
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    embedder = FakeEmbedder({red: [1, 0, 0, 0], blue: [0, 1, 0, 0]}, {"t": [1, 0, 0, 0]})
    nsfw, aesthetic = tiny_nsfw(4), tiny_aesthetic(4)
    models_ = SignalModels(
        embedder=embedder,
        nsfw=load_nsfw_head(save_head(nsfw, tmp_path / "n.pth")),
        aesthetic=load_aesthetic_head(save_head(aesthetic, tmp_path / "a.pth")),
    )
    table = pa.table(
        {"images": [[{"bytes": red, "path": None}, {"bytes": blue, "path": None}],
                    [{"bytes": blue, "path": None}], [], [{"bytes": b"junk", "path": None}]]}
    )  # fmt: skip
    columns = signal_columns(table, models_)
    with torch.no_grad():
        unsafe = nsfw(torch.eye(4)[:2]).squeeze(-1).numpy()
        beauty = aesthetic(torch.eye(4)[:2]).squeeze(-1).numpy()
    punsafe = columns["punsafe"].to_pylist()
    assert punsafe[0] == pytest.approx(unsafe.max(), rel=1e-5)
    assert punsafe[1] == pytest.approx(unsafe[1], rel=1e-5)
    assert punsafe[2:] == [None, None]
    score = columns["aesthetic_score"].to_pylist()
    assert score[0] == pytest.approx(beauty.min(), rel=1e-5) and score[2:] == [None, None]
    assert columns["pwatermark"].null_count == 4  # no watermark model configured


def test_heads_of_another_width_than_the_clip_are_refused(tmp_path, tiny_clip_dir):
    path = save_head(tiny_aesthetic(768), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    clip = ClipScoreParams(model=f"local-dir:{tiny_clip_dir}", pretrained=None)
    params = SignalParams(aesthetic_path=str(path), clip_model=clip.model, clip_pretrained=None)
    from fineharbor.core.quality.clip_score import load_clip_embedder

    with pytest.raises(SignalLoadError, match="768-d embeddings but the CLIP"):
        load_signal_models(params, clip, load_clip_embedder(clip))


PROJECT = """
sources:
  - {{name: photos, reader: image_folder, location: photos, mapping: {{caption: txt}}}}
stages:
  clip_score: {{model: "local-dir:{clip}", pretrained: null}}
  signals:
    nsfw_path: {root}/nsfw.safetensors
    aesthetic_path: {root}/sac+logos+ava1-l14-linearMSE.pth
    watermark_path: {root}/watermark.torchscript.pt
    watermark_image_size: 64
    clip_model: "local-dir:{clip}"
    clip_pretrained: null
    faces: true
"""


def _write_partition(storage: Storage, n: int) -> None:
    rows = [
        {
            "sample_id": make_sample_id("photos", str(i)),
            "source": "photos",
            "images": [{"bytes": encode(scene(96, 64, i), "JPEG"), "path": f"{i}.jpg"}],
            "texts": [{"user": "", "assistant": "A red ball on green grass near a fence."}],
            "origin_uri": f"file:///photos/{i}.jpg",
            "origin_key": str(i),
            "image_info": [],
            "dropped_turns": 0,
        }
        for i in range(n)
    ]
    table = pa.Table.from_pylist(rows, schema=CLEANED_SCHEMA)
    write_kept_rows(storage, DECONTAMINATED, "photos", table)


def test_scoring_stage_fills_each_signal_and_reports_absent_files(tmp_path, tiny_clip_dir, caplog):
    from fineharbor.core.quality.clip_score import scoring_clip
    from fineharbor.core.quality.stage import SCORED_SCHEMA, build_scored_samples

    project = tmp_path / "fineharbor.yaml"
    project.write_text(PROJECT.format(root=tmp_path, clip=tiny_clip_dir))
    models._REPORTED.clear()
    with caplog.at_level(logging.WARNING, logger="fineharbor.models"):
        config = load_config(project)
    messages = [r.getMessage() for r in caplog.records if r.name == "fineharbor.models"]
    assert len(messages) == 3
    for field, name, where in (
        ("nsfw_path", "nsfw.safetensors", "CLIP-based-NSFW-Detector"),
        ("aesthetic_path", "sac+logos+ava1-l14-linearMSE.pth", "improved-aesthetic-predictor"),
        ("watermark_path", "watermark.torchscript.pt", "LAION-5B-WatermarkDetection"),
    ):
        (message,) = [m for m in messages if m.startswith(f"stages.signals.{field}: not found")]
        assert str(tmp_path / name) in message and where in message

    storage = Storage(str(tmp_path / "home"))
    _write_partition(storage, 3)
    embedder, _ = scoring_clip(config.stages.clip_score)
    absent = load_signal_models(config.stages.signals, config.stages.clip_score, embedder)
    build_scored_samples(config, "photos", storage, embedder=embedder, signals=absent)
    scored = read_stage_table(storage, SCORED, "photos")
    assert scored.schema.names == SCORED_SCHEMA.names
    for name in ("punsafe", "aesthetic_score", "pwatermark"):
        assert scored.column(name).null_count == 3, name
    assert scored.column("face_count").to_pylist() == [0, 0, 0]  # the detector needs no file

    save_head(tiny_nsfw(embedder.dim), tmp_path / "nsfw.safetensors")
    save_head(tiny_aesthetic(embedder.dim), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    save_tiny_watermark_torchscript(tmp_path / "watermark.torchscript.pt")
    present = load_signal_models(config.stages.signals, config.stages.clip_score, embedder)
    assert present.shares_scoring_clip and present.embedder is embedder
    report, stats = build_scored_samples(
        config, "photos", storage, embedder=embedder, signals=present
    )
    assert report.conserved and report.kept == 3
    scored = read_stage_table(storage, SCORED, "photos")
    for name in ("punsafe", "aesthetic_score", "pwatermark"):
        assert scored.column(name).null_count == 0, name
        assert len(stats.signals[name]) == 3
    images = [row[0]["bytes"] for row in scored.column("images").to_pylist()]
    np.testing.assert_allclose(
        scored.column("punsafe").to_numpy(),
        present.nsfw.score(embedder.embed_images(images)),
        rtol=1e-5,
    )
    assert scored.column("face_boxes").to_pylist() == [[[]], [[]], [[]]]
