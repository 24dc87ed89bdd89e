"""The rule-based perturber and the four-level semi-synthetic training set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.quality.classifier import build_quality_training_set
from fineharbor.core.quality.perturb import (
    COLORS,
    COUNT_WORDS,
    GENERIC_CAPTIONS,
    SHAPES,
    VAGUE_ANSWERS,
    find_candidates,
    perturb_attribute,
    vague_text,
)
from fineharbor.core.schema import UNIFIED_SCHEMA

from .conftest import image, png, turn

CAPTION = "There are two red circles on the left and a blue star at the top."


def _changed_words(before: str, after: str) -> list[tuple[str, str]]:
    """Words that differ, ignoring an article adjusted to the new word ("a" -> "an")."""
    a, b = before.split(), after.split()
    assert len(a) == len(b)
    return [
        (x, y)
        for x, y in zip(a, b, strict=True)
        if x != y and {x.lower(), y.lower()} != {"a", "an"}
    ]


@pytest.mark.parametrize("kind", ["color", "shape", "count", "position"])
def test_one_attribute_of_the_requested_kind_changes(kind):
    for seed in range(20):
        text, got = perturb_attribute(CAPTION, np.random.default_rng(seed), kinds=(kind,))
        assert got == kind
        changed = _changed_words(CAPTION, text)
        assert len(changed) == 1, changed
        old, new = (w.strip(".,").lower() for w in changed[0])
        assert old != new
        if kind == "color":
            assert old in COLORS and new in COLORS
        elif kind == "shape":  # the grammatical number is kept
            plural_old, plural_new = old.endswith("s"), new.endswith("s")
            assert plural_old == plural_new
            assert old.rstrip("s") in SHAPES and new.rstrip("s").removesuffix("e") in {
                s.removesuffix("e") for s in SHAPES
            }
        elif kind == "count":
            assert old == "two" and new in COUNT_WORDS
        else:
            assert {old, new} in ({"left", "right"}, {"top", "bottom"})


def test_numbers_change_value_but_keep_their_format():
    text = "Paris is at 45 and Oslo at 0.25."
    for seed in range(20):
        new, kind = perturb_attribute(text, np.random.default_rng(seed), kinds=("number",))
        assert kind == "number"
        changed = _changed_words(text, new)
        assert len(changed) == 1
        old, value = (w.rstrip(".") for w in changed[0])
        assert float(value) >= 0 and float(value) != float(old)
        assert ("." in value) == ("." in old)


def test_yes_no_answers_flip_and_articles_stay_grammatical():
    new, kind = perturb_attribute(
        "Is there a red cross? Yes.", np.random.default_rng(0), ("polarity",)
    )
    assert (new, kind) == ("Is there a red cross? No.", "polarity")
    for seed in range(30):
        new, _ = perturb_attribute("An orange circle.", np.random.default_rng(seed), ("color",))
        article, color = new.split()[:2]
        assert article == ("An" if color[0] in "aeiou" else "A")
    # "no" inside a sentence is not an answer to flip
    assert all(c.kind != "polarity" for c in find_candidates("There is no red square."))


def test_text_without_attributes_is_not_perturbed():
    assert perturb_attribute("Hello world, nice to meet you.", np.random.default_rng(0)) is None


def test_vague_texts_are_generic_or_non_answers():
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = vague_text(rng)
        assert not any(w.strip(".").lower() in COLORS for w in text.split())
    answers = [vague_text(rng, "What color is the square?") for _ in range(50)]
    questions = [a for a in answers if a.startswith("What color is the square?")]
    assert questions and all(a.split("? ", 1)[1] in VAGUE_ANSWERS for a in questions)
    assert any(a in GENERIC_CAPTIONS for a in answers) or len(questions) < 50


def _samples() -> pa.Table:
    rows = [
        ("s0", [png((200, 0, 0))], [turn("", "A red square on the left.")]),
        (
            "s1",
            [png((0, 0, 200))],
            [turn("What color is the star?", "Blue."), turn("Where is it?", "At the top.")],
        ),
        ("s2", [png((0, 200, 0))], [turn("", "Three green triangles at the bottom.")]),
        ("s3", [], [turn("", "No image here.")]),  # skipped: nothing to pair the text with
        ("s4", [png((9, 9, 9))], [turn("", "")]),  # skipped: no text
        (
            "s5",
            [png((90, 90, 90)), png((1, 2, 3))],
            [turn("", "Two gray circles."), turn("", "A black square.")],
        ),
    ]
    return pa.table(
        {
            "sample_id": [r[0] for r in rows],
            "source": ["t"] * len(rows),
            "origin_uri": [None] * len(rows),
            "origin_key": [r[0] for r in rows],
            "images": [[image(d) for d in r[1]] for r in rows],
            "texts": [r[2] for r in rows],
            "segments": [None] * len(rows),  # not interleaved documents
            "metadata": [None] * len(rows),
        },
        schema=UNIFIED_SCHEMA,
    )


def test_training_set_has_four_levels_per_image_as_specified():
    table = _samples()
    data = build_quality_training_set(table, seed=3)
    assert len(data.images) == 4  # s3 and s4 are skipped
    assert data.images[3] == [png((90, 90, 90)), png((1, 2, 3))]  # every image of a document
    rows = data.examples.to_pylist()
    truth = {r["sample_id"]: r["segments"] for r in rows if r["level"] == 3}
    assert set(truth) == {"s0", "s1", "s2", "s5"}
    for row in rows:
        mine = truth[row["sample_id"]]
        if row["level"] == 2:  # exactly one word changed in exactly one segment
            diffs = [_changed_words(a, b) for a, b in zip(mine, row["segments"], strict=True)]
            assert sum(len(d) for d in diffs) == 1
            assert row["rule"] in ("color", "shape", "count", "position", "polarity", "number")
        elif row["level"] == 1:
            assert len(row["segments"]) == 1 and row["segments"] != mine
            assert row["rule"] == "vague"
        elif row["level"] == 0:  # another image's true text
            assert row["segments"] != mine and row["segments"] in truth.values()
            assert row["rule"] == "other_image"
    assert data.level_counts() == {0: 4, 1: 4, 2: 4, 3: 4}
    # deterministic for a seed
    again = build_quality_training_set(table, seed=3)
    assert again.examples.equals(data.examples)


def test_rewrite_hook_rewrites_synthetic_levels_and_failures_keep_the_rule_text():
    calls = []

    def rewrite(texts, levels):
        calls.append(list(levels))
        return [
            None if level == 1 else f"[{level}] {t}" for t, level in zip(texts, levels, strict=True)
        ]

    data = build_quality_training_set(_samples(), seed=0, rewrite=rewrite)
    for row in data.examples.to_pylist():
        if row["level"] == 2:
            assert all(s.startswith("[2] ") for s in row["segments"])
        else:  # real texts (3, 0) are never rewritten; failed rewrites (1) keep the rule text
            assert not any(s.startswith("[") for s in row["segments"])
    assert data.rewrite_failures == data.level_counts()[1]
    assert len(calls) == 1 and set(calls[0]) == {1, 2}  # one batched call


def test_llm_rewriter_sends_one_request_per_text_through_a_judge_backend():
    from fineharbor.core.judge.backend import CallableBackend
    from fineharbor.core.quality.classifier import llm_rewriter

    seen = []

    def reply(request):
        seen.append(request)
        return None if "vague" in request.user else "Rewritten."

    rewrite = llm_rewriter(CallableBackend("fake", reply))
    assert rewrite(["A red square.", "An image."], [2, 1]) == ["Rewritten.", None]
    assert "A red square." in seen[0].user and "Keep every claim" in seen[0].user
