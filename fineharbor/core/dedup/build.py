"""The dedup stages: ``duplicate_clusters`` over every train source (compact signature tables,
never images), then ``deduplicated_samples`` per source."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.config import ProjectConfig
from fineharbor.core.distributed.engine import counted
from fineharbor.core.pipeline import CLEANED, DEDUPLICATED, DUPLICATES, SIGNATURES
from fineharbor.core.schema import REJECT_SCHEMA
from fineharbor.core.stage_io import Progress, StageReport, write_stage
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows

# rows per batch when a global stage streams signature columns (a few MB a batch)
SIGNATURE_READ_ROWS = 16_384


def _train_sources(project: ProjectConfig, storage: Storage, asset: str) -> list[str]:
    done = set(storage.partitions(asset))
    return [p for p in project.role_partitions("train") if p in done]


def dedup_signature_columns(params) -> list[str]:
    """The signature columns the duplicate search reads with ``params`` (``DedupParams``)."""
    columns = ["sample_id", "image_index", "width", "height"]
    if params.exact_pixels:
        columns.append("sha256_pixels")
    if params.phash:
        columns += ["phash", "phash_flip", "phash_dihedral"]
    if params.copy_embedding or (params.phash and params.phash_verify_min_cosine is not None):
        columns.append("copy_embedding")
    if params.clip_embedding:
        columns.append("clip_embedding")
    return columns


def read_dedup_signatures(
    storage: Storage, sources: Sequence[str], params, sample_ids: pa.Array
) -> pa.Table:
    """The signature rows the duplicate search uses, streamed: only ``dedup_signature_columns``,
    only decodable images of ``sample_ids`` (signatures of samples an earlier stage dropped
    cannot be kept or removed). Embeddings stay float16 lists (2 bytes a value)."""
    columns = dedup_signature_columns(params)
    tables = []
    for source in sources:
        for batch in storage.iter_batches(
            SIGNATURES, source, columns=[*columns, "error"], batch_size=SIGNATURE_READ_ROWS
        ):
            keep = pc.and_(
                pc.is_null(batch.column("error")),
                pc.is_in(batch.column("sample_id"), value_set=sample_ids),
            )
            tables.append(pa.Table.from_batches([batch.filter(keep).select(columns)]))
    if not tables:
        # the schema module imports torch: only the empty case pays for it
        from fineharbor.core.signatures.compute import SIGNATURE_SCHEMA

        return pa.schema([SIGNATURE_SCHEMA.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)


def signature_diversity(
    storage: Storage, sources: Sequence[str], column: str, dropped: pa.Array
) -> object | None:
    """FineVision's diversity of the ``column`` vectors of every signature row whose sample is
    not in ``dropped``, streamed batch by batch (None when fewer than two vectors)."""
    from fineharbor.core.dedup.clusters import list_matrix
    from fineharbor.core.dedup.diversity import CovarianceAccumulator

    accumulator = CovarianceAccumulator()
    for source in sources:
        for batch in storage.iter_batches(
            SIGNATURES, source, columns=["sample_id", column], batch_size=SIGNATURE_READ_ROWS
        ):
            keep = pc.and_(
                pc.is_valid(batch.column(column)),
                pc.invert(pc.is_in(batch.column("sample_id"), value_set=dropped)),
            )
            accumulator.update(list_matrix(batch.column(column).filter(keep), np.float16))
    return accumulator.result() if accumulator.n > 1 else None


def build_duplicate_clusters(project: ProjectConfig, storage: Storage) -> tuple[pa.Table, dict]:
    """Exact and near duplicates across every train source, union-found into clusters.

    Signatures stream in with only the columns the search reads; what stays in memory is
    sized in docs/scale.md."""
    from fineharbor.core.dedup.clusters import DUPLICATE_SCHEMA, find_duplicates
    from fineharbor.core.dedup.samples import compact_samples
    from fineharbor.core.dedup.verify import batches_thumbnail_loader
    from fineharbor.core.distributed.tasks import TaskEngine

    sources = _train_sources(project, storage, SIGNATURES)
    samples = (
        pa.concat_tables([compact_samples(read_stage_rows(storage, CLEANED, s)) for s in sources])
        if sources
        else None
    )
    priorities = {s.name: s.priority for s in project.sources}
    params = project.stages.dedup
    # Candidate pairs are verified on small thumbnails (alignment + tile residuals), streamed
    # from the cleaned partitions once: look-alikes that embeddings confuse are not copies.
    thumbnails = batches_thumbnail_loader(
        lambda: itertools.chain.from_iterable(
            read_stage_rows(storage, CLEANED, s, columns=["sample_id", "images"]) for s in sources
        )
    )
    signatures = sum(storage.count_rows(SIGNATURES, s) for s in sources)
    # the signatures are passed unbound, so find_duplicates holds their only copy; the k-means
    # forest's leaves and the pixel verification batches run as Ray tasks when the stage is on
    # Ray (locally, verification has its own process pool)
    engine = TaskEngine(DUPLICATES, project.execution)
    clusters, report = (
        find_duplicates(
            read_dedup_signatures(
                storage, sources, params, samples.column("sample_id").combine_chunks()
            ),
            samples,
            params,
            priorities,
            thumbnails=thumbnails,
            engine=engine,
        )
        if samples is not None
        else (DUPLICATE_SCHEMA.empty_table(), {})
    )
    stats: dict = {"sources": sources, "signatures": signatures, **engine.summary()}
    # candidates proposed / capped / verified / refuted per signal, and how they were searched
    for key in ("vector_search", "candidates", "verification", "max_candidates_per_item"):
        if report.get(key):
            stats[key] = report[key]
    dropped = clusters.filter(pc.invert(clusters.column("is_kept"))).column("sample_id")
    for column in ("copy_embedding", "clip_embedding"):
        diversity = signature_diversity(storage, sources, column, dropped.combine_chunks())
        if diversity is not None:
            stats[f"diversity_{column}"] = diversity
    with storage.writer(DUPLICATES, None, DUPLICATE_SCHEMA) as writer:
        writer.write(clusters)
    return clusters, stats


def _duplicate_rejects(clusters: pa.Table, source_name: str) -> dict[str, dict]:
    mine = clusters.filter(
        pc.and_(
            pc.equal(clusters.column("source"), source_name), pc.invert(clusters.column("is_kept"))
        )
    )
    return {row["sample_id"]: row for row in mine.to_pylist()}


DEDUP_REJECT_SCHEMA = pa.schema(
    [
        *REJECT_SCHEMA,
        pa.field("duplicate_of", pa.string()),
        pa.field("cluster_id", pa.string()),
        pa.field("signal", pa.string()),
        pa.field("similarity", pa.float32()),
    ]
)


def _reason_for_signal(signal: str) -> str:
    return (
        "exact_duplicate"
        if signal in ("exact_pixels", "text_exact", "url_caption")
        else "near_duplicate"
    )


def build_deduplicated_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Cleaned samples minus the non-kept members of duplicate clusters (benchmarks pass)."""
    from fineharbor.core.cleaning import CLEANED_SCHEMA

    source = project.source(source_name)
    dropped = (
        _duplicate_rejects(storage.read_table(DUPLICATES), source_name)
        if source.role == "train"
        else {}
    )

    def split() -> Iterable[tuple[pa.Table, pa.Table]]:
        # a decision needs the ids only: the stage stores sample_id (core/stored.py)
        batches = storage.iter_batches(
            CLEANED, source_name, columns=["sample_id", "source", "origin_key"], batch_size=4096
        )
        for batch in counted(batches, progress):
            ids = batch.column("sample_id").to_pylist()
            keep = pa.array([i not in dropped for i in ids])
            rejected = [
                {
                    "sample_id": row["sample_id"],
                    "source": row["source"],
                    "origin_key": row["origin_key"],
                    "reason": _reason_for_signal(dropped[row["sample_id"]]["signal"]),
                    "detail": (
                        f"{dropped[row['sample_id']]['signal']} "
                        f"{dropped[row['sample_id']]['similarity']:.3f} with "
                        f"{dropped[row['sample_id']]['kept_sample_id']}"
                    ),
                    "duplicate_of": dropped[row["sample_id"]]["kept_sample_id"],
                    "cluster_id": dropped[row["sample_id"]]["cluster_id"],
                    "signal": dropped[row["sample_id"]]["signal"],
                    "similarity": dropped[row["sample_id"]]["similarity"],
                }
                for row in batch.select(["sample_id", "source", "origin_key"]).to_pylist()
                if row["sample_id"] in dropped
            ]
            yield (
                pa.Table.from_batches([batch]).filter(keep),
                pa.Table.from_pylist(rejected, schema=DEDUP_REJECT_SCHEMA),
            )

    return write_stage(
        storage,
        DEDUPLICATED,
        source_name,
        CLEANED_SCHEMA,
        split(),
        lambda: storage.count_rows(CLEANED, source_name),
        reject_schema=DEDUP_REJECT_SCHEMA,
    )
