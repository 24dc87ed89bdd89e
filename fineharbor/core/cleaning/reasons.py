"""Stable reject reason codes of the cleaning stage and the small type every rule returns.

The rules that reject with them, and the set of every code (``REASONS``), are declared once in
:mod:`fineharbor.core.cleaning.rules`.

The codes are a contract: the rejects ledger, the Dagster metadata and the SQL statistics group by
them, so a code is never renamed. Each rule function returns ``None`` (passes) or a
:class:`Reject` whose ``detail`` states the measured value against the threshold, e.g.
``"aspect 4.12 > 3.0"``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# interleaved documents: a rewritten text no longer splits into the document's paragraphs
from fineharbor.core.interleaved import DOCUMENT_SEGMENTS_MISMATCH as DOCUMENT_SEGMENTS_MISMATCH

# image integrity (always on: a sample whose image cannot be decoded safely is never kept)
IMAGE_MISSING = "image_missing"
IMAGE_CORRUPT = "image_corrupt"
IMAGE_TRUNCATED = "image_truncated"
IMAGE_FORMAT_NOT_ALLOWED = "image_format_not_allowed"
DECOMPRESSION_BOMB = "decompression_bomb"
IMAGE_DECODE_TIMEOUT = "image_decode_timeout"
# image safety: on a configured hash blocklist (the detail names the list, never the image)
BLOCKLISTED_IMAGE = "blocklisted_image"
# image size and quality
IMAGE_TOO_SMALL_BYTES = "image_too_small_bytes"
IMAGE_TOO_SMALL_SIDE = "image_too_small_side"
ASPECT_RATIO = "aspect_ratio"
TOO_MANY_PIXELS = "too_many_pixels"
IMAGE_BLURRY = "image_blurry"
IMAGE_LOW_ENTROPY = "image_low_entropy"
# text
TEXT_EMPTY = "text_empty"
ALT_TEXT_SHORT = "alt_text_short"
CAPTION_WORD_COUNT = "caption_word_count"
TURN_TOO_LONG = "turn_too_long"
LANGUAGE_NOT_ALLOWED = "language_not_allowed"
TEXT_REPETITIVE = "text_repetitive"
TEXT_SPECIAL_CHARS = "text_special_chars"
TEXT_UNK_TOKENS = "text_unk_tokens"
TEXT_UNSAFE = "text_unsafe"
# text safety: personal data found in a source whose PII mode is drop (the detail names the
# types, never the matched text)
PII_FOUND = "pii_found"
# source trust
DOMAIN_DENIED = "domain_denied"
DOMAIN_NOT_ALLOWED = "domain_not_allowed"
# GUI agent actions
GUI_ACTION_UNPARSEABLE = "gui_action_unparseable"
# a worker process died outside image decoding (e.g. killed by the OOM killer while handling
# this sample's text); the sample is rejected so the run can go on
WORKER_CRASHED = "worker_crashed"


class Reject(NamedTuple):
    """A failed rule: a stable reason code and the measured value against its threshold."""

    reason: str
    detail: str


def __getattr__(name: str) -> Any:
    # REASONS is derived from the rule table, which imports the rule modules that import this one
    if name == "REASONS":
        from fineharbor.core.cleaning.rules import REASONS

        return REASONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
