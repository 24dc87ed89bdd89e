"""The decontamination stages: ``benchmark_index`` over every benchmark source, then
``decontaminated_samples`` per source."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.config import ProjectConfig
from fineharbor.core.distributed.engine import counted
from fineharbor.core.pipeline import (
    BENCHMARK_INDEX,
    CLEANED,
    DECONTAMINATED,
    DEDUPLICATED,
    SIGNATURES,
)
from fineharbor.core.stage_io import Progress, StageReport, write_stage
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows


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
        image_matches,
        reject_benchmark_rows,
    )
    from fineharbor.core.distributed.tasks import TaskEngine

    source = project.source(source_name)
    columns = ["sample_id", "source", "origin_key", "texts"]  # it decides on texts and ids
    batches = counted(
        read_stage_rows(storage, DEDUPLICATED, source_name, columns=columns), progress
    )
    if source.role == "benchmark":
        results = (
            (CLEANED_SCHEMA.empty_table(), reject_benchmark_rows(pa.Table.from_batches([b])))
            for b in batches
        )
    else:
        engine = TaskEngine(DECONTAMINATED, project.execution)  # Ray tasks when listed there
        matcher = BenchmarkMatcher(
            storage.read_table(BENCHMARK_INDEX), project.stages.decontam, engine
        )
        signatures = storage.read_table(SIGNATURES, source_name)
        matched = image_matches(signatures, matcher)  # one search of the partition, in tasks
        results = (
            decontaminate_batch(pa.Table.from_batches([b]), signatures, matcher, matched)
            for b in batches
        )
    report = write_stage(
        storage,
        DECONTAMINATED,
        source_name,
        CLEANED_SCHEMA,
        results,
        lambda: storage.count_rows(DEDUPLICATED, source_name),
        reject_schema=DECONTAM_REJECT_SCHEMA,
    )
    if source.role != "benchmark":
        report.extra.update(engine.summary())
    return report
