"""UniFilter's published architecture from tiny configs (SigLIP / CLIP vision tower + AvgPool
projector + Qwen2), saved with save_pretrained and loaded by path offline: the projector, the
interleaved input, training, save/load, nulls, and a comparison with the CLIP-MLP on the same
held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fineharbor.core.quality.classifier import build_quality_training_set, score_quality
from fineharbor.core.quality.metrics import roc_auc
from fineharbor.core.quality.mllm_classifier import (
    AvgPoolProjector,
    MllmModelNotFoundError,
    MllmQualityModel,
    build_mllm_classifier,
    heldout_examples,
    train_mllm_classifier,
    training_documents,
)
from fineharbor.core.quality.params import MllmClassifierParams, QualityClassifierParams
from fineharbor.testing.unifilter import save_tiny_mllm

from .conftest import png
from .test_classifier import COLORS, _table, _toy_samples

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_mllm(tmp_path_factory):
    return save_tiny_mllm(tmp_path_factory.mktemp("tiny_mllm"))


def tiny_params(dirs, **overrides) -> MllmClassifierParams:
    vision, lm = dirs
    values = {
        "vision_model": str(vision),
        "language_model": str(lm),
        "visual_tokens": 4,
        "max_length": 64,
        "epochs": 4,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "device": "cpu",
    }
    return MllmClassifierParams(**(values | overrides))


@pytest.fixture(scope="module")
def trained(tiny_mllm):
    data = build_quality_training_set(_toy_samples(24), seed=0)
    return data, train_mllm_classifier(data, tiny_params(tiny_mllm))


def test_avgpool_projector_pools_the_patch_grid_and_drops_a_cls_token():
    projector = AvgPoolProjector(vision_width=1, lm_width=3, side=2)
    grid = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)  # a 4 x 4 grid, row-major
    pooled = projector.pool(grid)
    # each output token is the mean of one 2 x 2 block
    assert pooled.squeeze().tolist() == [2.5, 4.5, 10.5, 12.5]
    with_cls = torch.cat([torch.full((1, 1, 1), 99.0), grid], dim=1)  # CLIP: CLS first
    assert torch.equal(projector.pool(with_cls), pooled)
    assert projector(pooled).shape == (1, 4, 3)


def test_visual_tokens_are_spliced_at_each_image_position(tiny_mllm):
    model = build_mllm_classifier(tiny_params(tiny_mllm))
    red, blue = png(COLORS["red"]), png(COLORS["blue"])
    pooled = dict(zip((red, blue), model.pooled_images([red, blue]), strict=True))
    text = model.tokenizer("a red square", add_special_tokens=False)["input_ids"]
    document = [pooled[red], "a red square", pooled[blue], "a red square"]
    embeds = model._embed(document)
    # 4 visual tokens per image, the text tokens twice, then the end-of-sequence token
    assert embeds.shape[0] == 2 * 4 + 2 * len(text) + 1
    table = model.decoder.get_input_embeddings()
    visual_blue = model.projector(pooled[blue])
    start = 4 + len(text)
    assert torch.allclose(embeds[start : start + 4], visual_blue)
    assert torch.allclose(embeds[4 : 4 + len(text)], table(torch.tensor(text)))
    # order is read: the same segments in another order give another score
    scores = model.score_documents([[red, "a red square", blue], [blue, "a red square", red]])
    assert scores[0] != pytest.approx(scores[1], abs=1e-7)


def test_max_length_cuts_the_document_but_keeps_the_final_token(tiny_mllm):
    model = build_mllm_classifier(tiny_params(tiny_mllm, max_length=10))
    (pooled,) = model.pooled_images([png(COLORS["red"])])
    embeds = model._embed([pooled, "a red square " * 20])
    eos = model.decoder.get_input_embeddings()(torch.tensor([model.tokenizer.eos_token_id]))
    assert embeds.shape[0] == 10 and torch.allclose(embeds[-1], eos[0])


def test_trains_with_mse_and_reports_on_whole_heldout_images(trained):
    data, model = trained
    report = model.report
    held = heldout_examples(data, 0.2, 0)
    assert report.n_heldout == int(held.sum()) > 0 and report.n_train == int((~held).sum())
    assert sum(map(sum, report.confusion)) == report.n_heldout
    held_images = set(data.examples.column("sample").to_numpy()[held])
    train_images = set(data.examples.column("sample").to_numpy()[~held])
    assert held_images and not held_images & train_images


def test_save_load_roundtrip_scores_identically_and_nulls_like_the_clip_mlp(trained, tmp_path):
    _, model = trained
    model.save(tmp_path / "clf")
    loaded = MllmQualityModel.load(tmp_path / "clf")
    assert loaded.sources["language_model"] == model.sources["language_model"]
    assert loaded.report == model.report
    table = _table(
        [
            ([png(COLORS["red"])], [{"user": "", "assistant": "A red square."}]),
            ([], [{"user": "", "assistant": "No image here."}]),  # no image: null
            ([b"not an image"], [{"user": "", "assistant": "Broken."}]),  # undecodable: null
            ([png(COLORS["blue"])], []),  # no text: null
            (
                [png(COLORS["red"]), png(COLORS["green"])],  # a two-image document
                [{"user": "", "assistant": "A red square."}, {"user": "", "assistant": "Green."}],
            ),
        ]
    )
    first, second = model.score_samples(table), loaded.score_samples(table)
    assert first.to_pylist() == second.to_pylist()
    values = first.to_pylist()
    assert values[1] is None and values[2] is None and values[3] is None
    assert all(0.0 <= v <= 3.0 for v in (values[0], values[4]))


def test_a_clip_vision_tower_works_too(tmp_path):
    dirs = save_tiny_mllm(tmp_path, vision="clip")  # CLIP has a CLS token before the patches
    model = build_mllm_classifier(tiny_params(dirs))
    (score,) = model.score_documents([[png(COLORS["red"]), "a red square"]])
    assert 0.0 <= score <= 3.0


def test_a_missing_model_names_the_field_and_how_to_get_it(tiny_mllm, tmp_path):
    params = tiny_params(tiny_mllm, language_model=str(tmp_path / "absent"))
    with pytest.raises(MllmModelNotFoundError, match=r"mllm\.language_model.*save_pretrained"):
        build_mllm_classifier(params)


def test_visual_tokens_must_be_square():
    with pytest.raises(ValueError, match="square number"):
        MllmClassifierParams(visual_tokens=10)


def _balanced_samples(n: int):
    """Caption pairs whose level 3 vs 0 differ only in the colour named: a cross-modal test."""
    rng = np.random.default_rng(1)
    names = ["red", "blue"]
    rows = []
    for i in range(n):
        name = names[i % 2]
        size = (int(rng.integers(30, 50)), int(rng.integers(30, 50)))
        rows.append(([png(COLORS[name], size)], [{"user": "", "assistant": f"A {name} square."}]))
    return _table(rows)


@pytest.mark.slow
def test_both_architectures_compared_on_the_same_heldout_split(tiny_mllm, tiny_clip_dir):
    from fineharbor.core.quality.classifier import train_quality_classifier
    from fineharbor.demo.clip import load_demo_clip

    data = build_quality_training_set(_balanced_samples(48), seed=0)
    clip_params = QualityClassifierParams(hidden=32, epochs=60, batch_size=32, seed=0)
    embedder = load_demo_clip(tiny_clip_dir)
    clip_model = train_quality_classifier(data, embedder, clip_params)
    mllm = train_mllm_classifier(data, tiny_params(tiny_mllm, epochs=25), seed=0)

    held = heldout_examples(data, clip_params.holdout_fraction, clip_params.seed)
    levels = data.examples.column("level").to_numpy()[held]
    held_table = data.examples.filter(held)
    documents = [doc for doc, h in zip(training_documents(data), held, strict=True) if h]
    mllm_scores = np.array(mllm.score_documents(documents), dtype=np.float32)
    rows = [
        {"images": [{"bytes": b, "path": None} for b in data.images[s]],
         "texts": [{"user": "", "assistant": t} for t in segs]}
        for s, segs in zip(
            held_table.column("sample").to_pylist(),
            held_table.column("segments").to_pylist(),
            strict=True,
        )
    ]  # fmt: skip
    import pyarrow as pa

    clip_scores = np.array(
        score_quality(pa.Table.from_pylist(rows), clip_model, embedder).to_pylist(),
        dtype=np.float32,
    )
    assert len(mllm_scores) == len(clip_scores) == clip_model.report.n_heldout
    assert mllm.report.n_heldout == clip_model.report.n_heldout  # the very same examples
    for name, scores in (("clip_mlp", clip_scores), ("mllm", mllm_scores)):
        accuracy = float((np.rint(scores) == levels).mean())
        auc = roc_auc(scores[levels == 3], scores[levels == 0])
        print(f"{name}: held-out accuracy {accuracy:.3f}, ROC AUC level 3 vs 0 {auc:.3f}")
        # Level 3 and level 0 texts differ only in which colour they name: both must have
        # learned to read the image against the text, not the text alone.
        assert auc > 0.9, name
    assert float((np.rint(mllm_scores) == levels).mean()) > 0.6


def test_an_interleaved_document_reaches_the_lm_in_its_own_order():
    import pyarrow as pa

    from fineharbor.core.quality.mllm_classifier import sample_documents
    from fineharbor.core.schema import UNIFIED_SCHEMA

    a, b = png((255, 0, 0)), png((0, 0, 255))
    rows = [
        {
            "sample_id": "d",
            "source": "docs",
            "origin_key": "d",
            "images": [{"bytes": a, "path": None}, {"bytes": b, "path": None}],
            "texts": [{"user": "", "assistant": "Intro.\n\nAfter a."}],
            "segments": [
                {"image": None, "text": "Intro."},
                {"image": 0, "text": None},
                {"image": None, "text": "After a."},
                {"image": 1, "text": None},
            ],
        },
        {
            "sample_id": "c",
            "source": "caps",
            "origin_key": "c",
            "images": [{"bytes": a, "path": None}],
            "texts": [{"user": "", "assistant": "A red square."}],
        },
    ]
    documents = sample_documents(pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA))
    assert documents == [["Intro.", a, "After a.", b], [a, "A red square."]]
