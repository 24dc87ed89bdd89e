"""The ``cleaned_samples`` stage: a unified partition through the cleaning rules
(:mod:`fineharbor.core.cleaning.stage`) in worker processes, written atomically."""

from __future__ import annotations

from functools import partial

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.stage import CLEANED_SCHEMA, clean_batches
from fineharbor.core.config import ProjectConfig
from fineharbor.core.distributed.engine import BatchWork, StreamFn, cpu_processes, map_partition
from fineharbor.core.pipeline import CLEANED, UNIFIED
from fineharbor.core.stage_io import Progress, StageReport, write_mapped
from fineharbor.core.storage import Storage
from fineharbor.core.stored import by_reference

# Cleaning decodes every image: small batches keep all worker processes busy.
CLEAN_BATCH_ROWS = 64


def _clean_in_worker(params: CleanParams, processes: int) -> StreamFn:
    """Cleaning on a Ray worker: its own pool of ``processes`` (time limits, crash isolation)."""
    return by_reference(
        partial(clean_batches, params=params.model_copy(update={"processes": processes}))
    )


def build_cleaned_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """FineVision / LAION / DanQing filters and resizing, in worker processes."""
    project.source(source_name)  # an unknown source fails here, clearly
    params = project.clean_params()
    work = BatchWork(
        CLEANED,
        _clean_in_worker,
        (params, cpu_processes(project.execution)),
        # an image cleaning left as it was is stored by reference (core/stored.py)
        local=by_reference(partial(clean_batches, params=params)),
    )
    mapped = map_partition(
        project.execution,
        storage,
        UNIFIED,
        source_name,
        work,
        batch_size=CLEAN_BATCH_ROWS,
        progress=progress,
    )
    return write_mapped(
        storage,
        CLEANED,
        source_name,
        CLEANED_SCHEMA,
        mapped,
        lambda: storage.count_rows(UNIFIED, source_name),
    )
