"""CLIP score: a tiny random open_clip model loaded like a user's local checkpoint, and the
multi-turn / multi-image rules checked exactly with hand-set vectors."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from fineharbor.core.quality.clip_score import (
    clip_scores,
    load_clip_embedder,
)
from fineharbor.core.quality.params import ClipScoreParams
from fineharbor.demo.clip import load_demo_clip

from .conftest import FakeEmbedder, image, png, turn

RED, BLUE = png((220, 20, 20)), png((20, 20, 220))


def _table(images: list[list[bytes | None]], texts: list[list[dict]]) -> pa.Table:
    return pa.table(
        {"images": [[image(d) for d in row] for row in images], "texts": texts},
        schema=pa.schema(
            [
                ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
                ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string())]))),
            ]
        ),
    )


def test_scores_with_a_local_checkpoint_are_cosines_and_null_without_image_or_text(tiny_clip_dir):
    params = ClipScoreParams(model=f"local-dir:{tiny_clip_dir}", pretrained=None, device="cpu")
    embedder = load_clip_embedder(params)
    table = _table(
        [[RED], [], [b"not an image"], [RED, BLUE], [BLUE], [None]],
        [
            [turn("", "a red square")],
            [turn("", "no image")],
            [turn("", "corrupt image")],
            [turn("Which colours?", "Red and blue."), turn("More?", "No.")],
            [],
            [turn("", "image without bytes")],
        ],
    )
    scores = clip_scores(table, embedder, params)
    assert scores.type == pa.float32() and len(scores) == table.num_rows
    values = scores.to_pylist()
    assert [v is None for v in values] == [False, True, True, False, True, True]
    assert all(-1.0 <= v <= 1.0 for v in values if v is not None)
    # the same result through the demo loader, and batch composition does not matter
    again = clip_scores(table.slice(0, 1), load_demo_clip(tiny_clip_dir), params).to_pylist()
    assert again[0] == pytest.approx(values[0], abs=1e-6)


def test_missing_model_directory_says_what_is_missing(tmp_path):
    from fineharbor.core.signatures.embedders import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match=r"open_clip_config\.json"):
        load_demo_clip(tmp_path / "nowhere")


# Images A=[1,0,0], B=[0,1,0]; texts chosen so every cosine is known exactly.
FAKE = FakeEmbedder(
    images={RED: [1, 0, 0], BLUE: [0, 1, 0]},
    texts={
        "Q1 A1": [1, 0, 0],
        "Q2 A2": [0.6, 0.8, 0],
        "A1": [0, 0, 1],
        "Q1 A1 Q2 A2": [0, 1, 0],
    },
)
MULTI = _table([[RED, BLUE]], [[turn("Q1", "A1"), turn("Q2", "A2")]])


@pytest.mark.parametrize(
    ("text_rule", "image_rule", "expected"),
    [
        ("all_turns", "max", 1.0),  # "Q1 A1 Q2 A2" matches B exactly
        ("all_turns", "mean", 0.5),
        ("first_turn", "max", 1.0),  # "Q1 A1" matches A
        ("first_turn", "mean", 0.5),
        ("first_answer", "max", 0.0),  # "A1" is orthogonal to both images
        ("turn_mean", "max", 0.8),  # A: (1 + 0.6) / 2; B: (0 + 0.8) / 2
        ("turn_mean", "mean", 0.6),
    ],
)
def test_multi_turn_multi_image_rules(text_rule, image_rule, expected):
    params = ClipScoreParams(text_rule=text_rule, image_rule=image_rule)
    (score,) = clip_scores(MULTI, FAKE, params).to_pylist()
    assert score == pytest.approx(expected, abs=1e-6)


def test_undecodable_images_are_left_out_of_the_max_and_texts_are_embedded_once():
    fake = FakeEmbedder(images={RED: [1, 0]}, texts={"x": [0.6, 0.8]})
    table = _table([[b"broken", RED], [RED]], [[turn("", "x")], [turn("", "x")]])
    assert clip_scores(table, fake, ClipScoreParams(image_rule="mean")).to_pylist() == [
        pytest.approx(0.6),
        pytest.approx(0.6),
    ]
    assert fake.text_calls == [["x"]]


def test_params_defaults_and_validation():
    params = ClipScoreParams()
    assert (params.model, params.pretrained) == ("ViT-B-32", "openai")
    with pytest.raises(ValidationError):
        ClipScoreParams(unknown=1)
    # the bounds moved to the release recipe: an old key says where
    with pytest.raises(ValidationError, match=r"release\.clip_score_min"):
        ClipScoreParams(lower=0.28)
