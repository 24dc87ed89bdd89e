"""Interleaved documents through the cleaning stage: judged as text (not as a caption), their
`segments` kept in step with their text, and a bad image rejects the document it belongs to."""

from __future__ import annotations

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.stage import process_row
from fineharbor.core.interleaved import document_segments, document_turns
from fineharbor.testing.rules import sample_row
from fineharbor_tests.core.cleaning.helpers import ENGLISH, encode, scene

GOOD = encode(scene(640, 480, 1), "JPEG")
PARAMS = CleanParams(check_language=False)


def doc_row(texts: list[str | None], images: list[bytes]) -> dict:
    segments = document_segments(texts, len(images))
    turns = [(t["user"], t["assistant"]) for t in document_turns(segments)]
    return sample_row(turns, images, segments=segments, metadata="{}")


def test_a_long_document_is_not_judged_as_a_caption():
    long_text = " ".join(ENGLISH)
    assert len(long_text.split()) > 60  # over DanQing's caption words
    row = doc_row([long_text, None, ENGLISH[1]], [GOOD])
    kept, rejected = process_row(row, PARAMS)
    assert rejected is None
    assert kept["segments"] == row["segments"]
    assert kept["metadata"] == "{}"


def test_segments_follow_a_rewritten_text_and_a_merged_one_is_rejected():
    row = doc_row([ENGLISH[0], None, ENGLISH[1]], [GOOD])
    rewritten = dict(row)
    rewritten["texts"] = [{"user": "", "assistant": f"[REDACTED]\n\n{ENGLISH[1]}"}]
    kept, rejected = process_row(rewritten, PARAMS)
    assert rejected is None
    assert [s["text"] for s in kept["segments"]] == ["[REDACTED]", None, ENGLISH[1]]
    merged = dict(row, texts=[{"user": "", "assistant": f"{ENGLISH[0]} {ENGLISH[1]}"}])
    kept, rejected = process_row(merged, PARAMS)
    assert kept is None and rejected["reason"] == "document_segments_mismatch"


def test_a_broken_image_rejects_its_document_naming_the_image():
    row = doc_row([ENGLISH[0], None, None], [GOOD, b"not an image" * 50])
    kept, rejected = process_row(row, PARAMS)
    assert kept is None
    assert rejected["reason"] == "image_corrupt" and rejected["detail"].startswith("image 1: ")


def test_an_image_only_document_keeps_no_turns():
    row = doc_row([None, None], [GOOD, encode(scene(640, 480, 2), "JPEG")])
    assert row["texts"] == []
    kept, rejected = process_row(row, PARAMS)
    assert rejected is None and kept["texts"] == [] and len(kept["segments"]) == 2
