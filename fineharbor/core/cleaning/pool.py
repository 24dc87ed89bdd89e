"""The cleaning stage as process-pool work: each image decoded under a time limit, a decoder
crash costing only its sample.

Cleaning is one user of the stage-agnostic process-pool engine
(:mod:`fineharbor.core.distributed.pool`): :func:`cleaning_work` declares it. Each worker sets
the process-wide limits for decoding untrusted images (:func:`setup_worker_process`) and loads
the language models once; each image decode is a sub-item under ``decode_timeout_s``, and a row
may spend at most :data:`STALL_S` outside image decoding. A row that kills or stalls its worker
is rejected as ``image_decode_timeout`` / ``image_corrupt`` (in a decoder) or ``worker_crashed``
(outside one); the rest of the batch goes on.

Nothing here imports dagster; the stage can equally run in a Dagster op, a script or a
distributed engine's worker.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import pyarrow as pa

from fineharbor.core.cleaning import text
from fineharbor.core.cleaning.images import capture_c_stderr
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import IMAGE_CORRUPT, IMAGE_DECODE_TIMEOUT, WORKER_CRASHED
from fineharbor.core.cleaning.stage import Decoder, clean_batch
from fineharbor.core.distributed.engine import BatchWork, Failure, Resources, StreamFn
from fineharbor.core.distributed.pool import ProcessPool, in_worker, watch
from fineharbor.core.pipeline import CLEANED

# A sample with no image being decoded must still make progress: text rules take milliseconds,
# so a worker silent for this long outside image decoding is stuck and is killed.
STALL_S = 120.0


def setup_worker_process(params: CleanParams) -> None:
    """Process-wide settings for decoding untrusted images (called in each worker)."""
    from PIL import Image, ImageFile

    Image.MAX_IMAGE_PIXELS = max(1, params.decompression_bomb_pixels // 2)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warnings.simplefilter("ignore")
    capture_c_stderr()  # libtiff's warnings are counted per image, not printed
    if params.worker_memory_limit_mb:
        import resource

        limit = params.worker_memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class _ImageWatch:
    """The cleaning stage's hooks on the pool's watch: each row is timed and blamed on its own
    (the pool hands a worker runs of rows), each decode is a timed sub-item."""

    def row_start(self, index: int) -> None:
        watch().row_start(index)

    def image_start(self, index: int) -> None:
        watch().item_start(index)

    def image_end(self) -> None:
        watch().item_end()


def clean_setup(params: CleanParams, decoder: Decoder | None = None) -> StreamFn:
    """The cleaning stream of one worker: process-wide limits (in a pool worker only: they
    would change the host process) and the language models, loaded once."""
    if in_worker():
        setup_worker_process(params)
    if params.check_language:
        text.language_detector(params)  # load the language models once, before any deadline
    hooks = _ImageWatch()

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[pa.Table, pa.Table]]:
        for batch in batches:
            yield clean_batch(batch, params, decoder=decoder, hooks=hooks)

    return run


def clean_blame(failure: Failure, row: dict) -> tuple[str, str]:
    """The reject of a sample that killed or stalled its worker."""
    images = len(row.get("images") or [])
    prefix = f"image {failure.item}: " if failure.item >= 0 and images > 1 else ""
    if failure.kind == "timeout" and failure.item >= 0:
        return IMAGE_DECODE_TIMEOUT, f"{prefix}decode > {failure.limit_s} s (worker killed)"
    if failure.kind == "timeout":
        return WORKER_CRASHED, f"no progress for {failure.limit_s:.0f} s outside image decoding"
    if failure.item >= 0:
        return IMAGE_CORRUPT, f"{prefix}decoder crashed ({failure.how})"
    return WORKER_CRASHED, f"worker died ({failure.how}) on this sample"


def cleaning_work(
    params: CleanParams, decoder: Decoder | None = None, processes: int | None = None
) -> BatchWork:
    """The cleaning stage as work for any engine (isolated: a process pool by default)."""
    resources = Resources(
        processes=processes or params.worker_count,
        time_limit_s=STALL_S,
        item_time_limit_s=params.decode_timeout_s,
        start_method=params.start_method,
        reports_rows=True,
    )
    return BatchWork(
        CLEANED,
        clean_setup,
        (params, decoder),
        resources=resources,
        isolated=True,
        blame=clean_blame,
    )


def cleaning_pool(
    params: CleanParams, *, processes: int | None = None, decoder: Decoder | None = None
) -> ProcessPool:
    """A process pool of cleaning workers (a context manager; ``map`` yields per batch)."""
    return ProcessPool(cleaning_work(params, decoder, processes))
