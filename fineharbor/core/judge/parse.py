"""Extract a 1-5 rating from a judge's reply, or say why there is none.

Judges are asked for ``Rating: N`` but real replies vary: markdown (``**Rating:** 4/5``), JSON
(``{"rating": 4}``), a bare ``4``, a sentence ending in a number, or a reasoning model's
``<think>`` block before the answer. A rating is returned only when the reply names exactly one
value and it is an integer on the scale; anything else is ``None`` with a reason, so a wrong
number is never stored as a rating (a null is counted and visible; a wrong rating is not).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from fineharbor.core.judge.prompts import RATING_MAX, RATING_MIN

ParseReason = Literal["ok", "empty", "no_rating", "ambiguous", "out_of_range", "not_integer"]


class ParseResult(NamedTuple):
    rating: int | None
    reason: ParseReason


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_UNCLOSED_THINK = re.compile(r"<think>.*\Z", re.DOTALL | re.IGNORECASE)
_MARKUP = re.compile(r"[*`#]|__")
# "(1-5)", "1 to 5", "[1–5]": the scale restated, not a rating.
_SCALE_MENTION = re.compile(
    r"[(\[]?\b1\s*(?:-|–|—|to)\s*5\b[)\]]?|\bscale\s+of\s+1\s*(?:-|–|—|to)\s*5\b", re.IGNORECASE
)
# A leading minus is captured so that "Rating: -1" is out of range rather than read as 1.
_NUMBER = r"(-?\d+(?:\.\d+)?)"
# Optional denominator: "4/5", "4 out of 5".
_OUT_OF = r"(?:\s*(?:/|out\s+of)\s*(\d+))?"
# "Rating: 4", "rating = 4", '"rating": "4"', "Score - [4]", "Final rating is 4".
_LABELLED = re.compile(
    r"\b(?:rating|score)\b[\"']?\s*(?:is\b|[:=\-])?[\s\"'\[(]*" + _NUMBER + _OUT_OF,
    re.IGNORECASE,
)
_BARE = re.compile(r"^[\s\"'\[(]*" + _NUMBER + _OUT_OF + r"[\s\"'\])\.!]*$")
_ANY_NUMBER = re.compile(_NUMBER + _OUT_OF)
# "Rating: 3-4", "4 or 5": a range is not one rating.
_RANGE_TAIL = re.compile(r"\s*(?:-|–|—|or|to)\s*-?\d", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(_NUMBER + _OUT_OF + r"[\s\"'\])\.!]*$")


def strip_reasoning(text: str) -> str:
    """Drop ``<think>`` blocks: their numbers are deliberation, not the answer."""
    text = _THINK_BLOCK.sub(" ", text)
    return _UNCLOSED_THINK.sub(" ", text)  # cut off while still thinking: no answer given


def _value(number: str, denominator: str | None) -> ParseResult:
    if denominator is not None and int(denominator) != RATING_MAX:
        return ParseResult(None, "out_of_range")  # "7/10" is another scale, not a 1-5 rating
    value = float(number)
    if not value.is_integer():
        return ParseResult(None, "not_integer")
    rating = int(value)
    if not RATING_MIN <= rating <= RATING_MAX:
        return ParseResult(None, "out_of_range")
    return ParseResult(rating, "ok")


def _agree(matches: list[tuple[str, str | None]]) -> ParseResult:
    """Several mentions are fine only when they all give the same valid rating."""
    results = [_value(number, denominator or None) for number, denominator in matches]
    ratings = {r.rating for r in results if r.rating is not None}
    if len(ratings) > 1:
        return ParseResult(None, "ambiguous")
    if len(ratings) == 1 and all(r.rating is not None for r in results):
        return results[0]
    if ratings:
        return ParseResult(None, "ambiguous")  # one valid and one invalid value
    return results[0]


def parse_rating_detail(reply: str | None) -> ParseResult:
    """The rating in ``reply`` and why parsing succeeded or failed."""
    if reply is None or not reply.strip():
        return ParseResult(None, "empty")
    text = strip_reasoning(reply)
    text = _MARKUP.sub("", text)
    text = _SCALE_MENTION.sub(" ", text).strip()
    if not text:
        return ParseResult(None, "empty")

    # 1. Labelled ratings ("Rating: 4", JSON keys) win over any other number in the reply.
    labelled = list(_LABELLED.finditer(text))
    if labelled:
        if any(_RANGE_TAIL.match(text, match.end()) for match in labelled):
            return ParseResult(None, "ambiguous")
        return _agree([(match.group(1), match.group(2)) for match in labelled])

    # 2. The whole reply is a number ("4", "4.", "[4]", "4/5").
    bare = _BARE.match(text)
    if bare:
        return _value(bare.group(1), bare.group(2))

    # 3. A number ending the last line, if it is the only number on that line: "... I give 4."
    #    but not "3 or 4" (ambiguous) and not a number inside running text.
    last_line = [line for line in text.splitlines() if line.strip()][-1]
    trailing = _TRAILING_NUMBER.search(last_line)
    if trailing:
        if len(_ANY_NUMBER.findall(last_line)) > 1:
            return ParseResult(None, "ambiguous")
        return _value(trailing.group(1), trailing.group(2))
    return ParseResult(None, "no_rating")


def parse_rating(reply: str | None) -> int | None:
    """The 1-5 rating in a judge reply, or ``None`` when there is no single valid one."""
    return parse_rating_detail(reply).rating
