"""Which text of a unified sample is scored against its images.

A unified sample holds ``texts: list<struct<user, assistant>>``; an image-caption pair is one
turn whose ``user`` is empty (or a fixed prompt such as "Describe the image.") and whose
``assistant`` is the caption. Both scorers build on one definition:

* a **segment** is one turn as text: ``user`` and ``assistant`` joined by a space, with image
  placeholders (``<image>``) removed. The question is kept because in Q&A it carries most of
  the visual claim ("What color is the square?" / "Red.").
* the **CLIP score** (:mod:`fineharbor.core.quality.clip_score`) uses a single text per sample
  chosen by :data:`TextRule`; the default ``all_turns`` joins every segment and lets the model's
  tokenizer truncate to its context (77 tokens for OpenAI CLIP), so the first turns dominate,
  as in UniFilter's caption scoring (``"<image>\\n" + text`` truncated to 75 tokens).
* the **learned classifier** (:mod:`fineharbor.core.quality.classifier`) packs segments into
  chunks of at most ``chunk_words`` words (:func:`pack_segments`) and averages the chunks' text
  embeddings, so a long interleaved document is read in full instead of being truncated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

TextRule = Literal["first_answer", "first_turn", "all_turns", "turn_mean"]
ImageRule = Literal["max", "mean"]

# Image placeholders of the common conversation formats (LLaVA, Idefics, Qwen-VL, InternVL).
_PLACEHOLDERS = re.compile(r"<image>|<image_\d+>|<\|image\|>|<\|image_pad\|>|<img>|</img>")
_SPACES = re.compile(r"\s+")


def clean_text(text: str | None) -> str:
    """Placeholders removed and whitespace collapsed; ``None`` becomes an empty string."""
    if not text:
        return ""
    return _SPACES.sub(" ", _PLACEHOLDERS.sub(" ", text)).strip()


def turn_segment(turn: dict | None) -> str:
    """One turn as a single string: ``"{user} {assistant}"`` (either part may be empty)."""
    if not turn:
        return ""
    user = clean_text(turn.get("user"))
    answer = clean_text(turn.get("assistant"))
    return f"{user} {answer}".strip()


def sample_segments(texts: Sequence[dict] | None) -> list[str]:
    """The non-empty segments of a sample, in turn order."""
    segments = [turn_segment(turn) for turn in texts or []]
    return [s for s in segments if s]


def rule_texts(texts: Sequence[dict] | None, rule: TextRule) -> list[str]:
    """The text(s) the CLIP score compares with the images under ``rule``.

    ``first_answer``: the first turn's answer (the caption of a caption pair); falls back to the
    first segment when that answer is empty. ``first_turn``: the first segment. ``all_turns``:
    every segment joined into one text. ``turn_mean``: every segment on its own (the caller
    averages their scores). An empty list means there is nothing to score.
    """
    turns = list(texts or [])
    segments = sample_segments(turns)
    if not segments:
        return []
    if rule == "first_answer":
        answer = clean_text(turns[0].get("assistant")) if turns and turns[0] else ""
        return [answer or segments[0]]
    if rule == "first_turn":
        return [segments[0]]
    if rule == "all_turns":
        return [" ".join(segments)]
    if rule == "turn_mean":
        return segments
    raise ValueError(f"unknown text rule {rule!r}")


def pack_segments(segments: Sequence[str], chunk_words: int) -> list[str]:
    """Greedily join consecutive segments into chunks of at most ``chunk_words`` words.

    A segment longer than the budget is split at word boundaries. Words are a proxy for tokens
    (English BPE averages about 1.3 tokens a word), so ``chunk_words`` ~ 0.7 x context length
    keeps each chunk inside the text encoder's window.
    """
    if chunk_words < 1:
        raise ValueError("chunk_words must be at least 1")
    chunks: list[str] = []
    current: list[str] = []
    for segment in segments:
        words = segment.split()
        while words:
            room = chunk_words - len(current)
            if room <= 0:
                chunks.append(" ".join(current))
                current, room = [], chunk_words
            # Start a new chunk rather than split a segment that would fit in a fresh one.
            if current and len(words) > room and len(words) <= chunk_words:
                chunks.append(" ".join(current))
                current, room = [], chunk_words
            current.extend(words[:room])
            words = words[room:]
    if current:
        chunks.append(" ".join(current))
    return chunks
