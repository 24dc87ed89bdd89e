"""Interleaved image-text documents (OBELICS / MINT-1T): their order, kept beside the unified
sample, and their OBELICS release layout.

A document is stored as a unified sample whose ``images`` are the document's images in order,
whose ``texts`` is one turn (``user`` empty, ``assistant`` every paragraph joined by a blank
line) so that text rules, judges and text dedup see the document's text, and whose ``segments``
column keeps the document order: one ``{image, text}`` entry per position, ``image`` the index
into ``images`` (text null) or ``text`` the paragraph (image null). Caption and chat samples
leave ``segments`` null. ``metadata`` holds the document's metadata JSON string as read.

Paragraphs are normalised when mapped (stripped, blank lines inside collapsed to one newline,
empty ones dropped), so the joined text splits back into exactly its paragraphs on ``"\\n\\n"``:
a stage that rewrites the document text (redaction) keeps ``segments`` in step with
:func:`resync_segments`, and a rewrite that merges or splits paragraphs rejects the document.
"""

from __future__ import annotations

import re

import pyarrow as pa

PARAGRAPH_SEPARATOR = "\n\n"
DOCUMENT_SEGMENTS_MISMATCH = "document_segments_mismatch"

_BLANK_LINES = re.compile(r"\n\s*\n")


class DocumentError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def paragraph(text: str) -> str:
    """A paragraph as stored: stripped, with no blank line inside (the separator stays unique)."""
    return _BLANK_LINES.sub("\n", text.strip())


def document_segments(texts: list[str | None], image_count: int) -> list[dict]:
    """The segments of a document whose aligned ``texts`` list holds null at each image
    position; the images are numbered in order. Empty paragraphs are dropped."""
    segments: list[dict] = []
    image = 0
    for position, value in enumerate(texts):
        if value is None:
            segments.append({"image": image, "text": None})
            image += 1
        elif not isinstance(value, str):
            raise DocumentError(
                "unmappable_record", f"texts[{position}] is {type(value).__name__}, not text"
            )
        elif paragraph(value):
            segments.append({"image": None, "text": paragraph(value)})
    if image != image_count:
        raise DocumentError(
            "unmappable_record",
            f"{image} image positions in texts but {image_count} images were read",
        )
    return segments


def document_text(segments: list[dict]) -> str:
    return PARAGRAPH_SEPARATOR.join(s["text"] for s in segments if s["text"] is not None)


def document_turns(segments: list[dict]) -> list[dict]:
    """The one turn text rules and judges read: the whole document as the answer (none for a
    document of images only, which is then image-only to the text rules)."""
    text = document_text(segments)
    return [{"user": "", "assistant": text}] if text else []


def resync_segments(segments: list[dict], turns: list[dict]) -> list[dict]:
    """``segments`` with their paragraphs taken from the (possibly rewritten) turn text.

    Raises DocumentError when the turn is gone or no longer splits into as many paragraphs."""
    wanted = sum(s["text"] is not None for s in segments)
    if not wanted and not turns:
        return segments
    if len(turns) != 1:
        raise DocumentError(
            DOCUMENT_SEGMENTS_MISMATCH, f"a document has one turn, {len(turns)} remain"
        )
    text = turns[0]["assistant"] or ""
    if text == document_text(segments):
        return segments
    parts = text.split(PARAGRAPH_SEPARATOR) if text else []
    if len(parts) != wanted:
        raise DocumentError(
            DOCUMENT_SEGMENTS_MISMATCH,
            f"the rewritten text has {len(parts)} paragraphs, the document {wanted}",
        )
    it = iter(parts)
    return [s if s["text"] is None else {"image": None, "text": next(it)} for s in segments]


def obelics_row(row: dict, images: list[dict], include_sample_id: bool) -> dict:
    """A document in the OBELICS columns: ``images`` and ``texts`` aligned lists, exactly one
    of the two non-null at each position, ``metadata``, then source, score and id."""
    segments = row["segments"] or []
    out = {
        "images": [None if s["image"] is None else images[s["image"]] for s in segments],
        "texts": [s["text"] for s in segments],
        "metadata": row.get("metadata") or "{}",
        "source": row["source"],
        "quality_score": row.get("quality_score"),
    }
    if include_sample_id:
        out["sample_id"] = row["sample_id"]
    return out


def obelics_schema(include_sample_id: bool) -> pa.Schema:
    """The OBELICS release layout typed as `datasets` features, so ``load_dataset("parquet")``
    gives PIL images (or None) in ``images``."""
    import datasets

    spec: dict = {
        "images": datasets.List(datasets.Image()),
        "texts": datasets.List(datasets.Value("string")),
        "metadata": datasets.Value("string"),
        "source": datasets.Value("string"),
        "quality_score": datasets.Value("float64"),
    }
    if include_sample_id:
        spec["sample_id"] = datasets.Value("string")
    return datasets.Features(spec).arrow_schema
