"""What text is scored: segments, the CLIP text rules, and word-budgeted chunks."""

from __future__ import annotations

import pytest

from fineharbor.core.quality.text import pack_segments, rule_texts, sample_segments

from .conftest import turn

QA = [turn("<image>\nWhat color is the square?", "Red."), turn("Where is it?", "On the left.")]
CAPTION = [turn("", "A red square on the left.")]


def test_segments_join_question_and_answer_without_placeholders():
    assert sample_segments(QA) == ["What color is the square? Red.", "Where is it? On the left."]
    assert sample_segments(CAPTION) == ["A red square on the left."]
    assert sample_segments([turn("", ""), turn("  ", None)]) == []
    assert sample_segments(None) == []


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("first_answer", ["Red."]),
        ("first_turn", ["What color is the square? Red."]),
        ("all_turns", ["What color is the square? Red. Where is it? On the left."]),
        ("turn_mean", ["What color is the square? Red.", "Where is it? On the left."]),
    ],
)
def test_text_rules_for_a_multi_turn_sample(rule, expected):
    assert rule_texts(QA, rule) == expected


def test_every_rule_scores_the_caption_of_a_caption_pair():
    for rule in ("first_answer", "first_turn", "all_turns", "turn_mean"):
        assert rule_texts(CAPTION, rule) == ["A red square on the left."]


def test_first_answer_falls_back_to_the_question_when_the_answer_is_empty():
    assert rule_texts([turn("Describe it.", "")], "first_answer") == ["Describe it."]
    assert rule_texts([], "all_turns") == []


def test_pack_segments_respects_the_word_budget_and_keeps_every_word():
    segments = ["one two three", "four five", "six seven eight nine ten eleven twelve"]
    chunks = pack_segments(segments, 5)
    assert all(len(c.split()) <= 5 for c in chunks)
    assert " ".join(chunks).split() == " ".join(segments).split()
    assert chunks == ["one two three four five", "six seven eight nine ten", "eleven twelve"]
    # a segment that fits a fresh chunk is not split across two
    assert pack_segments(["a b c", "d e f"], 5) == ["a b c", "d e f"]
    assert pack_segments(["a b", "c"], 50) == ["a b c"]
    with pytest.raises(ValueError):
        pack_segments(["a"], 0)
