from __future__ import annotations

import pytest

from fineharbor.core.judge.parse import parse_rating, parse_rating_detail, strip_reasoning


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Rating: 4", 4),
        ("rating: 1", 1),
        ("RATING:5", 5),
        ("Rating: 4.", 4),
        ("Rating: 4\n", 4),
        ("  Rating:   3  ", 3),
        ("**Rating:** 4/5", 4),
        ("**Rating: 4**", 4),
        ("## Rating: 2", 2),
        ("`Rating: 5`", 5),
        ("Rating: 4/5", 4),
        ("Rating: 4 / 5", 4),
        ("Rating: 4 out of 5", 4),
        ("Rating = 3", 3),
        ("Rating - 2", 2),
        ("Rating: [4]", 4),
        ("Rating: (5)", 5),
        ("Final rating: 5", 5),
        ("My rating is 2.", 2),
        ("Score: 3", 3),
        ("Rating (1-5): 4", 4),
        ("Rating on a scale of 1 to 5: 2", 2),
        ("Rating: 4.0", 4),
        ("4", 4),
        ("4.", 4),
        (" 5 ", 5),
        ("[3]", 3),
        ("**4**", 4),
        ("4/5", 4),
        ("4 out of 5", 4),
        ('{"rating": 4}', 4),
        ('{"rating": "4"}', 4),
        ('{"Rating": 2, "reason": "2 typos and 3 broken tags"}', 2),
        ('```json\n{"rating": 5}\n```', 5),
        ("The answer is clear and well formatted. 5", 5),
        ("The answer has 2 small errors.\n4", 4),
        ("I would rate this a 3.", 3),
        ("Rating: 4\nRating: 4", 4),
        ("Rating: 4\nThe answer has 3 issues.", 4),  # the labelled rating wins over other numbers
        ("<think>Maybe 2, or 3? The image shows 7 items.</think>\nRating: 5", 5),
        ("<think>\n1 2 3\n</think>4", 4),
    ],
)
def test_accepts(reply: str, rating: int) -> None:
    assert parse_rating(reply) == rating
    assert parse_rating_detail(reply).reason == "ok"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (None, "empty"),
        ("", "empty"),
        ("   \n ", "empty"),
        ("<think>the answer is probably 4", "empty"),  # cut off while thinking
        ("<think>4</think>", "empty"),
        ("Rating: 0", "out_of_range"),
        ("Rating: 6", "out_of_range"),
        ("Rating: 10/10", "out_of_range"),  # another scale
        ("Rating: 4/10", "out_of_range"),
        ("Rating: -1", "out_of_range"),
        ("rating: 42", "out_of_range"),
        ("7", "out_of_range"),
        ("0/5", "out_of_range"),
        ('{"rating": 9}', "out_of_range"),
        ("Rating: 4.5", "not_integer"),
        ("3.5", "not_integer"),
        ("Rating: 3\nRating: 4", "ambiguous"),
        ("Rating: 3-4", "ambiguous"),
        ("Rating: 3 or 4", "ambiguous"),
        ("Rating: 4 to 5", "ambiguous"),
        ("3 or 4", "ambiguous"),
        ("3-4", "ambiguous"),
        ("I'd say between 2 and 3", "ambiguous"),
        ("Rating: 4, Rating: 7", "ambiguous"),
        ('{"rating": 2} Rating: 5', "ambiguous"),
        ("I cannot rate this.", "no_rating"),
        ("Rating: N", "no_rating"),
        ("Rating: four", "no_rating"),
        ("There are 3 apples in the image and the answer is fine", "no_rating"),
        ("random tokens image question", "no_rating"),
    ],
)
def test_rejects(reply: str | None, reason: str) -> None:
    assert parse_rating(reply) is None
    assert parse_rating_detail(reply).reason == reason


def test_strip_reasoning_keeps_the_answer() -> None:
    assert strip_reasoning("<think>a 3</think>Rating: 4").strip() == "Rating: 4"
    assert strip_reasoning("<THINK>x</THINK>ok").strip() == "ok"
