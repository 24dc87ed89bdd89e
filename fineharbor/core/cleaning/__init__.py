"""Cleaning stage core (no dagster): FineVision / LAION / DanQing filters, safe image decoding.

Entry points: :func:`clean_batch` (in process), :func:`clean_batches` (worker processes with a
per-image time limit), :data:`CLEANED_SCHEMA`, :class:`CleanParams`, and :data:`RULES`,
the ordered table of every cleaning rule.
"""

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import Reject
from fineharbor.core.cleaning.rules import REASONS, RULES, Rule
from fineharbor.core.cleaning.stage import (
    CLEANED_SCHEMA,
    CLEANING_FIELDS,
    IMAGE_INFO_TYPE,
    clean_batch,
    clean_batches,
    cleaned_schema,
    process_row,
)

__all__ = [
    "CLEANED_SCHEMA",
    "CLEANING_FIELDS",
    "IMAGE_INFO_TYPE",
    "REASONS",
    "RULES",
    "CleanParams",
    "Reject",
    "Rule",
    "clean_batch",
    "clean_batches",
    "cleaned_schema",
    "process_row",
]
