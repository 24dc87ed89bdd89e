"""Rule-based English text perturbations for UniFilter-style semi-synthetic training data.

UniFilter has Claude write a text at each of four quality levels for a real image. Here the
same four levels are produced by rules, so the data can be built offline and reproducibly
(an LLM can still rewrite them through the ``rewrite`` hook of
:func:`fineharbor.core.quality.classifier.build_quality_training_set`):

* 3 — the true text;
* 2 — exactly one attribute made wrong (:func:`perturb_attribute`): a colour, shape, count,
  position or yes/no word swapped for another of the same vocabulary, or a number changed;
* 1 — vague or generic (:func:`vague_text`): "An image.", templated generic captions, or the
  true question with a non-answer;
* 0 — another image's text (chosen by the caller).

Every function takes an explicit ``numpy.random.Generator``: the same seed gives the same data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# One vocabulary per attribute; a word is only ever replaced by another word of its own
# vocabulary, so the sentence stays fluent and only the claim changes.
COLORS = (
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white",
    "gray", "beige", "violet", "cyan", "magenta", "gold", "silver", "turquoise",
)  # fmt: skip
SHAPES = (
    "circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "rectangle", "oval",
    "pentagon", "heart", "octagon",
)  # fmt: skip
# Counts keep their grammatical number: "one" is never swapped (the noun would have to change).
COUNT_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Positions are swapped with their opposite, which keeps the preposition right ("on the left").
POSITION_OPPOSITES = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "above": "below",
    "below": "above",
    "upper": "lower",
    "lower": "upper",
    "horizontal": "vertical",
    "vertical": "horizontal",
}
POLARITY = {"yes": "no", "no": "yes"}

_PLURAL_SHAPES = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
_SHAPE_FORMS = {
    **{s: (s, False) for s in SHAPES},
    **{p: (s, True) for s, p in _PLURAL_SHAPES.items()},
}
# Colour synonyms never replace each other (a swap must change the claim).
_COLOR_ALIASES = {"grey": "gray"}

ATTRIBUTE_KINDS = ("color", "shape", "count", "position", "polarity", "number")

_WORD = re.compile(r"[A-Za-z]+")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?!\w)")
_ARTICLE = re.compile(r"\b([Aa]n?)(\s+)$")


@dataclass(frozen=True)
class Candidate:
    """A span of ``text`` that can be replaced to make one claim wrong."""

    start: int
    end: int
    kind: str
    original: str


def _match_case(word: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def find_candidates(text: str) -> list[Candidate]:
    """Every perturbable span, in text order."""
    found: list[Candidate] = []
    for match in _WORD.finditer(text):
        word = match.group(0)
        lower = word.lower()
        kind = None
        if lower in COLORS or lower in _COLOR_ALIASES:
            kind = "color"
        elif lower in _SHAPE_FORMS:
            kind = "shape"
        elif lower in COUNT_WORDS:
            kind = "count"
        elif lower in POSITION_OPPOSITES:
            kind = "position"
        elif lower in POLARITY and _is_bare_answer(text, match.start(), match.end()):
            kind = "polarity"
        if kind is not None:
            found.append(Candidate(match.start(), match.end(), kind, word))
    for match in _NUMBER.finditer(text):
        found.append(Candidate(match.start(1), match.end(1), "number", match.group(1)))
    return sorted(found, key=lambda c: c.start)


def _is_bare_answer(text: str, start: int, end: int) -> bool:
    """ "Yes"/"no" as a whole answer ("... in the image? Yes."), not inside a sentence."""
    before = text[:start].rstrip()
    after = text[end:].strip()
    return (not before or before[-1] in "?.!:") and after in ("", ".", "!", ",")


def _replacement(candidate: Candidate, rng: np.random.Generator) -> str:
    word = candidate.original
    lower = word.lower()
    if candidate.kind == "color":
        same = _COLOR_ALIASES.get(lower, lower)
        options = [c for c in COLORS if c != same]
        new = options[int(rng.integers(len(options)))]
    elif candidate.kind == "shape":
        base, plural = _SHAPE_FORMS[lower]
        options = [s for s in SHAPES if s != base]
        new = options[int(rng.integers(len(options)))]
        new = _PLURAL_SHAPES[new] if plural else new
    elif candidate.kind == "count":
        options = [c for c in COUNT_WORDS if c != lower]
        new = options[int(rng.integers(len(options)))]
    elif candidate.kind == "position":
        new = POSITION_OPPOSITES[lower]
    elif candidate.kind == "polarity":
        new = POLARITY[lower]
    elif candidate.kind == "number":
        return _other_number(word, rng)
    else:  # pragma: no cover - programming error
        raise ValueError(candidate.kind)
    return _match_case(new, word)


def _other_number(number: str, rng: np.random.Generator) -> str:
    """A different non-negative number of the same format, off by a noticeable amount."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    value = float(number)
    step = abs(value) * float(rng.uniform(0.2, 0.6))
    # Integers move by at least 1; decimals (normalised coordinates, prices) by at least one
    # unit of their last digit, so 0.26 becomes e.g. 0.38, not 1.26.
    step = max(1.0, round(step)) if decimals == 0 else max(10.0**-decimals, round(step, decimals))
    sign = -1.0 if (rng.random() < 0.5 and value - step >= 0) else 1.0
    new = value + sign * step
    return f"{new:.{decimals}f}"


def _fix_article(prefix: str, next_word: str) -> str:
    """Keep "a"/"an" right after a swap ("an orange" -> "a red")."""
    match = _ARTICLE.search(prefix)
    if not match:
        return prefix
    article, space = match.group(1), match.group(2)
    wanted = "an" if next_word[:1].lower() in "aeiou" else "a"
    wanted = _match_case(wanted, article)
    return prefix[: match.start(1)] + wanted + space


def perturb_attribute(
    text: str, rng: np.random.Generator, kinds: tuple[str, ...] = ATTRIBUTE_KINDS
) -> tuple[str, str] | None:
    """``text`` with exactly one attribute made wrong, and the attribute's kind.

    A kind is drawn first (uniformly among the kinds present), then one of its occurrences, so a
    caption full of colours still gets its counts and positions perturbed. ``None`` when the
    text has nothing perturbable.
    """
    candidates = [c for c in find_candidates(text) if c.kind in kinds]
    if not candidates:
        return None
    present = sorted({c.kind for c in candidates}, key=ATTRIBUTE_KINDS.index)
    kind = present[int(rng.integers(len(present)))]
    of_kind = [c for c in candidates if c.kind == kind]
    chosen = of_kind[int(rng.integers(len(of_kind)))]
    new = _replacement(chosen, rng)
    prefix = _fix_article(text[: chosen.start], new)
    return prefix + new + text[chosen.end :], kind


# --------------------------------------------------------------------------- level 1

GENERIC_CAPTIONS = (
    "An image.",
    "A picture.",
    "A photo.",
    "A picture of some things.",
    "An image of something.",
    "This is an image.",
    "Some objects.",
    "Various things.",
    "An illustration.",
    "A graphic.",
    "Untitled.",
    "Image for this post.",
    "Click to see the full picture.",
)
_GENERIC_OPENERS = ("A picture", "An image", "A photo", "A view", "A graphic", "A scene")
_GENERIC_BODIES = (
    "of some things",
    "showing a few objects",
    "with some shapes and colors",
    "of stuff on a background",
    "with several items",
    "of something interesting",
    "with a few elements in it",
)
VAGUE_ANSWERS = (
    "It is in the image.",
    "Something.",
    "I am not sure.",
    "It depends.",
    "There are some.",
    "Maybe.",
    "It is shown in the picture.",
    "Several things.",
)


def vague_text(rng: np.random.Generator, question: str | None = None) -> str:
    """A level-1 text: generic (fixed or templated) or, given a question, a non-answer to it.

    Only a real question (ending in "?") gets a non-answer; a caption prompt such as "Describe
    the image." is not a question and gets a generic caption instead.
    """
    if question and question.rstrip().endswith("?") and rng.random() < 0.5:
        answer = VAGUE_ANSWERS[int(rng.integers(len(VAGUE_ANSWERS)))]
        return f"{question.strip()} {answer}"
    if rng.random() < 0.5:
        return GENERIC_CAPTIONS[int(rng.integers(len(GENERIC_CAPTIONS)))]
    opener = _GENERIC_OPENERS[int(rng.integers(len(_GENERIC_OPENERS)))]
    body = _GENERIC_BODIES[int(rng.integers(len(_GENERIC_BODIES)))]
    return f"{opener} {body}."


# --------------------------------------------------------------------------- documents

# Web page chrome: what a level-1 document paragraph says instead of describing its images.
PAGE_CHROME = (
    "This site uses cookies; by browsing you agree to their use.",
    "Sign up for our weekly newsletter.",
    "All rights reserved.",
    "Related posts.",
    "Leave a reply.",
    "Your email address will not be published.",
    "Posted in Uncategorized.",
    "Previous post. Next post.",
    "Share this article.",
    "Loading comments...",
    "Menu. Home. About. Contact.",
    "Powered by a content management system.",
    "Download our app for the best experience.",
    "This article may contain affiliate links.",
    "Page 1 of 2.",
    "Tags: photos, gallery, blog.",
)


def boilerplate_paragraph(rng: np.random.Generator, fragments: int = 2) -> str:
    """A level-1 document paragraph: a few distinct pieces of page chrome."""
    picks = rng.choice(len(PAGE_CHROME), size=min(fragments, len(PAGE_CHROME)), replace=False)
    return " ".join(PAGE_CHROME[int(i)] for i in picks)
