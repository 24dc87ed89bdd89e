"""The ``image_signatures`` stage: per image of the cleaned samples, hashes and embeddings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import pyarrow as pa

from fineharbor.core.config import ProjectConfig
from fineharbor.core.distributed.engine import BatchWork, StreamFn, map_partition
from fineharbor.core.pipeline import CLEANED, SIGNATURES
from fineharbor.core.schema import REJECT_SCHEMA
from fineharbor.core.stage_io import Progress, StageReport, write_mapped
from fineharbor.core.storage import Storage

SIGNATURE_BATCH_ROWS = 64


def _image_count(storage: Storage, asset: str, source_name: str) -> int:
    return sum(
        sum(len(images or []) for images in batch.column("images").to_pylist())
        for batch in storage.iter_batches(asset, source_name, columns=["images"], batch_size=512)
    )


def _signature_pairs(
    batches: Iterable[pa.RecordBatch], params, embedders: Sequence
) -> Iterable[tuple[pa.Table, pa.Table]]:
    from fineharbor.core.signatures.compute import compute_signatures

    for table in compute_signatures(batches, params, embedders):
        yield table, REJECT_SCHEMA.empty_table()


def _sign_in_worker(params, embedders: Sequence | None = None) -> StreamFn:
    """Signatures with ``embedders`` (loaded in this process), or with the ones a worker loads
    once (a Ray actor, on its GPU share)."""
    if embedders is None:
        from fineharbor.core.signatures.embedders import build_embedders

        embedders = build_embedders(params)
    return partial(_signature_pairs, params=params, embedders=embedders)


def build_image_signatures(
    project: ProjectConfig,
    source_name: str,
    storage: Storage,
    progress: Progress | None = None,
    embedders: Sequence = (),
) -> StageReport:
    """Per image: byte and pixel sha256, perceptual hashes, copy-detection and CLIP vectors.

    ``embedders`` are the ones loaded in this process, used by the local engine; on Ray each
    actor loads those ``stages.signatures`` names."""
    from fineharbor.core.signatures.compute import SIGNATURE_SCHEMA

    project.source(source_name)
    params = project.stages.signatures
    work = BatchWork(
        SIGNATURES,
        _sign_in_worker,
        (params,),
        gpu=True,
        models={"embedders": embedders},
    )
    mapped = map_partition(
        project.execution,
        storage,
        CLEANED,
        source_name,
        work,
        batch_size=SIGNATURE_BATCH_ROWS,
        columns=["sample_id", "source", "images"],
        progress=progress,
    )
    report = write_mapped(
        storage,
        SIGNATURES,
        source_name,
        SIGNATURE_SCHEMA,
        mapped,
        lambda: _image_count(storage, CLEANED, source_name),
    )
    report.key = ("sample_id", "image_index")
    return report
