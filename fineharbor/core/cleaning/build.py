"""The ``cleaned_samples`` stage: a unified partition through the cleaning rules
(:mod:`fineharbor.core.cleaning.stage`) in worker processes, written atomically."""

from __future__ import annotations

from fineharbor.core.cleaning.pool import cleaning_work
from fineharbor.core.cleaning.stage import CLEANED_SCHEMA
from fineharbor.core.config import ProjectConfig
from fineharbor.core.distributed.engine import map_partition
from fineharbor.core.distributed.pool import WorkerPools
from fineharbor.core.pipeline import CLEANED, UNIFIED
from fineharbor.core.stage_io import Progress, StageReport, write_mapped
from fineharbor.core.storage import Storage
from fineharbor.core.stored import referencing

# Cleaning decodes every image: small batches keep all worker processes busy.
CLEAN_BATCH_ROWS = 64


def build_cleaned_samples(
    project: ProjectConfig,
    source_name: str,
    storage: Storage,
    progress: Progress | None = None,
    pools: WorkerPools | None = None,
) -> StageReport:
    """FineVision / LAION / DanQing filters and resizing, in worker processes (``pools``: warm
    ones to reuse)."""
    project.source(source_name)  # an unknown source fails here, clearly
    mapped = map_partition(
        project.execution,
        storage,
        UNIFIED,
        source_name,
        # an image cleaning left as it was is stored by reference (core/stored.py)
        referencing(cleaning_work(project.clean_params())),
        batch_size=CLEAN_BATCH_ROWS,
        progress=progress,
        pools=pools,
    )
    return write_mapped(
        storage,
        CLEANED,
        source_name,
        CLEANED_SCHEMA,
        mapped,
        lambda: storage.count_rows(UNIFIED, source_name),
    )
