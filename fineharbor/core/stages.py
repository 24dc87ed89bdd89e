"""Per-source stages as plain functions: read the upstream partition, apply core logic, write.

Each returns a :class:`StageReport` that the orchestrator turns into metadata and checks. No
Dagster here, so the same functions run from the CLI, a process pool or a distributed engine.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.cleaning import CLEANED_SCHEMA
from fineharbor.core.cleaning.pool import cleaning_work
from fineharbor.core.config import MappingSpec, ProjectConfig, UrlListSource
from fineharbor.core.distributed.engine import (
    BatchWork,
    MappedPartition,
    StreamFn,
    counted,
    map_partition,
)
from fineharbor.core.distributed.pool import WorkerPools
from fineharbor.core.download_store import (
    ACCEPT_LOSSES_ENV,
    DOWNLOADS,
    DownloadLossError,
    DownloadStore,
    LossCounter,
    ReusePolicy,
)
from fineharbor.core.mapping import map_batch
from fineharbor.core.pipeline import (
    BENCHMARK_INDEX,
    CLEANED,
    DECONTAMINATED,
    DEDUPLICATED,
    DUPLICATES,
    RAW,
    SIGNATURES,
    UNIFIED,
)
from fineharbor.core.readers import ReadStats, read_source, reports_stats
from fineharbor.core.readers.url_list import read_url_list
from fineharbor.core.schema import RAW_SCHEMA, REJECT_SCHEMA, UNIFIED_SCHEMA
from fineharbor.core.storage import Storage

Progress = Callable[[int], None]

# Cleaning decodes every image: small batches keep all worker processes busy.
CLEAN_BATCH_ROWS = 64


@dataclass
class StageReport:
    asset: str
    partition: str | None
    rows_in: int
    kept: int
    rejected: int
    reasons: dict[str, int]
    seconds: float
    schema: pa.Schema
    extra: dict = field(default_factory=dict)
    # Columns that identify a row: per-image stages have several rows per sample.
    key: tuple[str, ...] = ("sample_id",)

    @property
    def conserved(self) -> bool:
        return self.rows_in == self.kept + self.rejected

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def write_stage(
    storage: Storage,
    asset: str,
    partition: str,
    schema: pa.Schema,
    results: Iterable[tuple[pa.Table, pa.Table]],
    rows_in: Callable[[], int],
    reject_schema: pa.Schema = REJECT_SCHEMA,
) -> StageReport:
    """Write a stream of (kept, rejected) tables atomically; `rows_in` is read after the stream."""
    started = time.perf_counter()
    with storage.writer(asset, partition, schema, reject_schema=reject_schema) as writer:
        for kept, rejected in results:
            writer.write(kept)
            writer.reject(rejected)
    return StageReport(
        asset=asset,
        partition=partition,
        rows_in=rows_in(),
        kept=storage.count_rows(asset, partition),
        rejected=storage.count_rows(asset, partition, kind="rejects"),
        reasons=dict(writer.reason_counts.most_common()),
        seconds=time.perf_counter() - started,
        schema=schema,
    )


def build_raw_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Read a source as it is, fetching its images: the first, per-source stage.

    URL lists reuse the downloads kept from earlier runs, and a run that would replace
    published rows with download failures is not published (:func:`_guard_downloads`)."""
    source = project.source(source_name)
    shard = project.shard(source_name)
    seen = 0
    stats = ReadStats()
    store = None
    if isinstance(source, UrlListSource):
        policy = ReusePolicy.for_source(source)
        store = DownloadStore(storage, source.name, policy, project.stages.ingest.download)
        batches = read_url_list(source, project.stages.ingest, progress, shard, stats, store)
    else:
        batches = read_source(source, project.stages.ingest, progress, shard, stats)

    def seen_and_guarded() -> Iterable[tuple[pa.Table, pa.Table]]:
        nonlocal seen
        losses = LossCounter()
        for kept, rejected in batches:
            seen += kept.num_rows + rejected.num_rows
            if store is not None:
                losses.add(rejected)
            yield kept, rejected
        if store is not None:
            _guard_downloads(storage, source_name, losses)

    report = write_stage(storage, RAW, source_name, RAW_SCHEMA, seen_and_guarded(), lambda: seen)
    if store is not None:
        report.extra.update(store.stats.as_metadata())
    if reports_stats(source.reader):  # files seen = rows + rejects + sidecars read into rows
        report.extra.update(stats.as_metadata())
    return report


def _guard_downloads(storage: Storage, partition: str, losses: LossCounter) -> None:
    """Refuse to publish when rows of the published partition would become download failures
    ("not now" ones: DNS, connection, timeout, HTTP errors); the published output stays."""
    if not storage.has_partition(RAW, partition) or os.environ.get(ACCEPT_LOSSES_ENV) == "1":
        return
    published = storage.iter_batches(RAW, partition, columns=["sample_id"], batch_size=8192)
    lost = losses.lost(published)
    if not lost:
        return
    reasons = ", ".join(f"{reason} {count}" for reason, count in lost.most_common())
    raise DownloadLossError(
        f"{RAW} {partition}: not published: {lost.total()} URL(s) whose images the published "
        f"partition holds now fail to download ({reasons}); the published output "
        f"({storage.count_rows(RAW, partition)} rows) stays in place. Their kept copies are "
        f"missing from {DOWNLOADS}/ under the storage root: retry when the servers answer, or "
        f"set {ACCEPT_LOSSES_ENV}=1 to publish without them."
    )


def _map_records(mapping: MappingSpec) -> StreamFn:
    return lambda batches: (map_batch(batch, mapping) for batch in batches)


def _write_mapped(
    storage: Storage,
    asset: str,
    partition: str,
    schema: pa.Schema,
    mapped: MappedPartition,
    rows_in: Callable[[], int],
    reject_schema: pa.Schema = REJECT_SCHEMA,
) -> StageReport:
    """:func:`write_stage` of a mapped partition; the report says where it ran."""
    report = write_stage(storage, asset, partition, schema, mapped, rows_in, reject_schema)
    report.extra.update(mapped.info)
    return report


def build_unified_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Map raw records into the unified schema with the source's declared mapping."""
    source = project.source(source_name)
    work = BatchWork(UNIFIED, _map_records, (source.mapping,))
    mapped = map_partition(
        project.execution,
        storage,
        RAW,
        source_name,
        work,
        batch_size=source.batch_size,
        progress=progress,
    )
    return _write_mapped(
        storage,
        UNIFIED,
        source_name,
        UNIFIED_SCHEMA,
        mapped,
        lambda: storage.count_rows(RAW, source_name),
    )


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
        cleaning_work(project.clean_params()),
        batch_size=CLEAN_BATCH_ROWS,
        progress=progress,
        pools=pools,
    )
    return _write_mapped(
        storage,
        CLEANED,
        source_name,
        CLEANED_SCHEMA,
        mapped,
        lambda: storage.count_rows(UNIFIED, source_name),
    )


# --------------------------------------------------------------------------- signatures, dedup,
# decontamination. Cross-source stages work on compact tables (signatures, ids), never on images.

SIGNATURE_BATCH_ROWS = 64
# rows per batch when a global stage streams signature columns (a few MB a batch)
SIGNATURE_READ_ROWS = 16_384


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
    report = _write_mapped(
        storage,
        SIGNATURES,
        source_name,
        SIGNATURE_SCHEMA,
        mapped,
        lambda: _image_count(storage, CLEANED, source_name),
    )
    report.key = ("sample_id", "image_index")
    return report


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

    sources = _train_sources(project, storage, SIGNATURES)
    samples = (
        pa.concat_tables(
            [compact_samples(storage.iter_batches(CLEANED, s, batch_size=256)) for s in sources]
        )
        if sources
        else None
    )
    priorities = {s.name: s.priority for s in project.sources}
    params = project.stages.dedup
    # Candidate pairs are verified on small thumbnails (alignment + tile residuals), streamed
    # from the cleaned partitions once: look-alikes that embeddings confuse are not copies.
    thumbnails = batches_thumbnail_loader(
        lambda: itertools.chain.from_iterable(
            storage.iter_batches(CLEANED, s, columns=["sample_id", "images"]) for s in sources
        )
    )
    signatures = sum(storage.count_rows(SIGNATURES, s) for s in sources)
    # the signatures are passed unbound, so find_duplicates holds their only copy
    clusters, report = (
        find_duplicates(
            read_dedup_signatures(
                storage, sources, params, samples.column("sample_id").combine_chunks()
            ),
            samples,
            params,
            priorities,
            thumbnails=thumbnails,
        )
        if samples is not None
        else (DUPLICATE_SCHEMA.empty_table(), {})
    )
    stats: dict = {"sources": sources, "signatures": signatures}
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
        for batch in counted(storage.iter_batches(CLEANED, source_name, batch_size=256), progress):
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


def embedder_id(project: ProjectConfig, column: str | None) -> str:
    """Names the model behind an embedding column, so imported vectors can be checked."""
    params = project.stages.signatures
    if column == "copy_embedding" and params.sscd_path:
        return f"sscd:{Path(params.sscd_path).name}"
    if column == "clip_embedding" and params.clip_model:
        return f"open_clip:{params.clip_model}:{params.clip_pretrained}"
    return "none"


def build_benchmark_index(project: ProjectConfig, storage: Storage) -> tuple[pa.Table, dict]:
    """Benchmarks' image signatures and question n-grams, plus imported benchmark embeddings."""
    from fineharbor.core.decontam.index import (
        BENCHMARK_INDEX_SCHEMA,
        image_rows,
        ngram_rows,
        precomputed_rows,
    )

    params = project.stages.decontam
    done = set(storage.partitions(SIGNATURES)) & set(storage.partitions(CLEANED))
    benchmarks = [p for p in project.role_partitions("benchmark") if p in done]
    parts = [BENCHMARK_INDEX_SCHEMA.empty_table()]
    for name in benchmarks:
        samples = storage.read_table(
            CLEANED, name, columns=["sample_id", "source", "origin_key", "texts"]
        )
        keys = dict(
            zip(
                samples.column("sample_id").to_pylist(),
                samples.column("origin_key").to_pylist(),
                strict=True,
            )
        )
        columns = ["source", "sample_id", "image_index", "phash", "phash_flip", "error"]
        columns += [params.embedding] if params.embedding else []
        signatures = storage.read_table(SIGNATURES, name, columns=columns)
        parts.append(image_rows(signatures, keys, params))
        parts.append(ngram_rows(samples.to_pylist(), params))
    for path in params.precomputed_embeddings:
        parts.append(precomputed_rows(Path(path), embedder_id(project, params.embedding), params))
    index = pa.concat_tables(parts)
    with storage.writer(BENCHMARK_INDEX, None, BENCHMARK_INDEX_SCHEMA) as writer:
        writer.write(index)
    kinds = pc.value_counts(index.column("kind")).to_pylist()
    return index, {
        "benchmarks": benchmarks,
        **{f"{k['values']}_rows": k["counts"] for k in kinds},
        "embedder": embedder_id(project, params.embedding),
    }


def build_decontaminated_samples(
    project: ProjectConfig, source_name: str, storage: Storage, progress: Progress | None = None
) -> StageReport:
    """Deduplicated samples minus those matching a benchmark; benchmarks themselves are out."""
    from fineharbor.core.cleaning import CLEANED_SCHEMA
    from fineharbor.core.decontam.match import (
        DECONTAM_REJECT_SCHEMA,
        BenchmarkMatcher,
        decontaminate_batch,
        reject_benchmark_rows,
    )

    source = project.source(source_name)
    batches = counted(storage.iter_batches(DEDUPLICATED, source_name, batch_size=256), progress)
    if source.role == "benchmark":
        results = (
            (CLEANED_SCHEMA.empty_table(), reject_benchmark_rows(pa.Table.from_batches([b])))
            for b in batches
        )
    else:
        matcher = BenchmarkMatcher(storage.read_table(BENCHMARK_INDEX), project.stages.decontam)
        signatures = storage.read_table(SIGNATURES, source_name)
        results = (
            decontaminate_batch(pa.Table.from_batches([b]), signatures, matcher) for b in batches
        )
    return write_stage(
        storage,
        DECONTAMINATED,
        source_name,
        CLEANED_SCHEMA,
        results,
        lambda: storage.count_rows(DEDUPLICATED, source_name),
        reject_schema=DECONTAM_REJECT_SCHEMA,
    )
