"""Demo sources with planted defects and their ground truth (see ``generate.py``)."""

from fineharbor.demo.generate import (
    DEFECT_RATES,
    DEFECTS,
    DUPLICATE_DEFECTS,
    IMAGE_DEFECTS,
    NEAR_DUPLICATES,
    SOURCES,
    TEXT_DEFECTS,
    TRAIN_SOURCES,
    UNREACHABLE_DEFECTS,
    DemoSummary,
    generate_demo,
    plan_counts,
)
from fineharbor.demo.server import serve_directory

__all__ = [
    "DEFECTS",
    "DEFECT_RATES",
    "DUPLICATE_DEFECTS",
    "IMAGE_DEFECTS",
    "NEAR_DUPLICATES",
    "SOURCES",
    "TEXT_DEFECTS",
    "TRAIN_SOURCES",
    "UNREACHABLE_DEFECTS",
    "DemoSummary",
    "generate_demo",
    "plan_counts",
    "serve_directory",
]
