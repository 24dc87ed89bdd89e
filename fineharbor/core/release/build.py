"""The two global stages of the release: `concept_clusters` and `release_mix`.

Both read the release input (``RELEASE_INPUT_ASSET``) of every train source. The release is
built in two passes over it: the first reads only ids, turn counts and score columns and decides
what enters (filters, source mix, balanced sampling); the second streams the chosen rows, one
shard at a time, into a staging directory that is renamed into place when everything (shards,
card, manifest) is written.
"""

from __future__ import annotations

import itertools
import math
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.catalog import StageTable, connect_in_memory
from fineharbor.core.concepts import hierarchical_kmeans
from fineharbor.core.concepts.embeddings import (
    EMBEDDING_CHOICES,
    pick_column_from_counts,
    sample_embeddings,
    stream_signatures,
)
from fineharbor.core.dedup.diversity import CovarianceAccumulator
from fineharbor.core.distributed.tasks import TaskEngine
from fineharbor.core.pipeline import CONCEPTS, RELEASE, SCORED, SIGNATURES
from fineharbor.core.release.card import (
    CARD_MODELS,
    CardFacts,
    render_card,
    signal_distribution,
)
from fineharbor.core.release.select import (
    Candidates,
    ReleaseGate,
    check_input,
    score_columns,
)
from fineharbor.core.release.shards import (
    IMAGE_SIGNALS,
    RELEASE_INDEX_SCHEMA,
    SourceLayout,
    run_rows,
    storage_order,
    write_sources,
)
from fineharbor.core.release.writer import ReleaseFile, ReleaseFiles
from fineharbor.core.schema import REJECT_SCHEMA
from fineharbor.core.sql_models import load_models, run_models
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows, stage_schema

if TYPE_CHECKING:
    from fineharbor.core.config import ProjectConfig

# The stage the release reads: decontaminated rows plus clip_score, quality_score and the judge
# ratings. A filter on a score column the input lacks fails with a clear error.
RELEASE_INPUT_ASSET = SCORED
RELEASES_DIR = "releases"
CONCEPT_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("clusters", pa.list_(pa.int64()), nullable=False),
        pa.field("distance", pa.float32(), nullable=False),
    ]
)


def _input_partitions(project: ProjectConfig, storage: Storage) -> list[str]:
    done = set(storage.partitions(RELEASE_INPUT_ASSET))
    return [p for p in project.partition_keys if p in done]


def _train_input_partitions(project: ProjectConfig, storage: Storage) -> list[str]:
    return [s for s in _input_partitions(project, storage) if project.source(s).role == "train"]


def build_concept_clusters(project: ProjectConfig, storage: Storage) -> tuple[pa.Table, dict]:
    """Hierarchical k-means over one vector per release-input sample (mean of its images)."""
    params = project.stages.concepts
    sources = [
        s for s in _train_input_partitions(project, storage) if storage.has_partition(SIGNATURES, s)
    ]
    ids = pa.concat_arrays(
        [
            storage.read_table(RELEASE_INPUT_ASSET, source, columns=["sample_id"])
            .column(0)
            .combine_chunks()
            for source in sources
        ]
        or [pa.array([], pa.string())]
    ).unique()
    # which column: null counts streamed over every signature row (as pick_column counts them),
    # then only that column is read, for the release-input samples
    rows, nulls = 0, dict.fromkeys(EMBEDDING_CHOICES, 0)
    for source in sources:
        for batch in storage.iter_batches(
            SIGNATURES, source, columns=list(EMBEDDING_CHOICES), batch_size=16_384
        ):
            rows += batch.num_rows
            for name in EMBEDDING_CHOICES:
                nulls[name] += batch.column(name).null_count
    if rows:
        column = pick_column_from_counts(rows, nulls, params.embedding)
        signatures = stream_signatures(
            itertools.chain.from_iterable(
                storage.iter_batches(
                    SIGNATURES, s, columns=["sample_id", "source", column], batch_size=16_384
                )
                for s in sources
            ),
            ids,
            ["sample_id", "source", column],
        )
        sample_ids, sample_sources, vectors, column = sample_embeddings(
            signatures, ids, column, picked=True
        )
        del signatures  # the stored vectors: only the means are clustered
    else:
        sample_ids = sample_sources = pa.array([], pa.string())
        vectors, column = np.zeros((0, 0), np.float32), "none"
    ids_count = len(ids)
    stats: dict = {"embedding": column, "samples": ids_count, "clustered": len(sample_ids)}
    if len(sample_ids):
        # the assignments to centroids run as Ray tasks when the stage is on Ray
        engine = TaskEngine(CONCEPTS, project.execution)
        hierarchy = hierarchical_kmeans(vectors, params, engine)
        stats |= engine.summary()
        paths = np.stack(hierarchy.labels, axis=1).astype(np.int64)  # (samples, levels)
        offsets = np.arange(0, paths.size + 1, paths.shape[1], dtype=np.int32)
        table = pa.table(
            {
                "sample_id": sample_ids,
                "source": sample_sources,
                "clusters": pa.ListArray.from_arrays(offsets, paths.ravel()),
                "distance": pa.array(hierarchy.distances, pa.float32()),
            },
            schema=CONCEPT_SCHEMA,
        )
        stats["levels"] = [
            {
                "level": level + 1,
                "clusters": hierarchy.n_clusters[level],
                "max_size": int(hierarchy.sizes(level).max()),
                "median_size": float(np.median(hierarchy.sizes(level))),
            }
            for level in range(hierarchy.n_levels)
        ]
    else:
        table = CONCEPT_SCHEMA.empty_table()
        stats["levels"] = []
    with storage.writer(CONCEPTS, None, CONCEPT_SCHEMA) as writer:
        writer.write(table)
    return table, stats


@dataclass
class ReleaseResult:
    index: pa.Table
    rejects: pa.Table
    path: str
    files: list
    tables: dict[str, pa.Table]
    facts: CardFacts
    input_rows: int
    extra: dict = field(default_factory=dict)
    awaiting_review: dict[str, str] = field(default_factory=dict)
    """When no train source may enter yet (none approved): each one and why; nothing written."""

    @property
    def written(self) -> bool:
        return not self.awaiting_review

    def left_out_by_reason(self) -> dict[str, int]:
        """Rows left out per reason (columnar: no per-row Python objects at any size)."""
        counts = self.rejects.group_by("reason").aggregate([("reason", "count")])
        return dict(zip(*(counts.column(c).to_pylist() for c in counts.column_names), strict=True))

    def released_and_rejected(self) -> int:
        """Released rows that are also among the rejected ones (0 in a sound release)."""
        rejected = self.rejects.column("sample_id").combine_chunks()
        return pc.sum(pc.is_in(self.index.column("sample_id"), value_set=rejected)).as_py() or 0

    def released_from(self, sources: Iterable[str]) -> int:
        """Released rows of any of ``sources`` (the benchmark sources: 0 in a sound release)."""
        names = pa.array(sorted(sources), pa.string())
        return pc.sum(pc.is_in(self.index.column("source"), value_set=names)).as_py() or 0


def awaiting_review(project: ProjectConfig, gate: ReleaseGate | None) -> dict[str, str]:
    """The recipe's train sources and why each is blocked, when the gate lets none of them in
    (a new project before its first review); empty when one may enter or nothing is gated."""
    if gate is None:
        return {}
    listed = {s.name for s in project.release.sources}
    train = [
        s.name for s in project.sources if s.role == "train" and (not listed or s.name in listed)
    ]
    if not train or any(name not in gate.blocked for name in train):
        return {}
    return {name: gate.blocked[name] for name in train}


def _select(
    project: ProjectConfig,
    storage: Storage,
    partitions: list[str],
    gate: ReleaseGate,
) -> tuple[Candidates, list]:
    recipe = project.release
    listed = {s.name for s in recipe.sources}
    candidates = Candidates(recipe, gate)
    for partition in partitions:
        schema = stage_schema(storage, RELEASE_INPUT_ASSET, partition)
        wanted = ["sample_id", "source", "origin_key", "texts", *score_columns(schema)]
        source, role = project.source(partition).name, project.source(partition).role
        if role == "train" and (not listed or source in listed):
            check_input(schema, recipe, RELEASE_INPUT_ASSET)
        for batch in read_stage_rows(
            storage, RELEASE_INPUT_ASSET, partition, columns=wanted, batch_size=1024
        ):
            if role == "benchmark":
                candidates.leave_out(batch, "benchmark_source", "role: benchmark")
            elif listed and source not in listed:
                candidates.leave_out(batch, "source_not_in_recipe", "not in release.sources")
            else:
                candidates.admit(batch, source)
    candidates.apply_source_mix()
    flat = []
    if recipe.balancing.enabled:
        if not storage.has_partition(CONCEPTS):
            raise FileNotFoundError(
                "release.balancing is enabled but concept_clusters has no output: materialize it"
            )
        flat = candidates.balance(storage.read_table(CONCEPTS))
    return candidates, flat


CAPTION_PRESETS = ("laion", "webdataset_caption")


def is_caption_source(project: ProjectConfig, source: str) -> bool:
    """Sources mapped from a caption (image-text pairs): their one-turn samples go to tars."""
    mapping = project.source(source).mapping
    return mapping.caption is not None or mapping.preset in CAPTION_PRESETS


def is_interleaved_source(project: ProjectConfig, source: str) -> bool:
    return project.source(source).mapping.preset == "interleaved"


def _write_sources(
    project: ProjectConfig, storage: Storage, candidates: Candidates, staging: str
) -> tuple[list[str], list[ReleaseFile], list[dict], dict]:
    """The chosen rows' shards under ``staging``, as tasks (on Ray when ``release_mix`` is in
    ``execution.stages``): the sources written, the files, the index entries and where the
    tasks ran."""
    recipe = project.release
    layouts = []
    obelics = recipe.interleaved_layout == "obelics"
    turns: dict[str, list[int]] = {}  # only the rows that lost turns to a judge minimum
    for source in candidates.sources():
        chosen = candidates.chosen(source)
        turns |= candidates.turns(source)
        partitions = project.partitions_of([source])
        ordered = storage_order(storage, RELEASE_INPUT_ASSET, partitions, chosen)
        found = run_rows(ordered)
        if found != len(chosen):
            raise LookupError(
                f"{RELEASE_INPUT_ASSET} {source}: {len(chosen)} rows chosen for the release, "
                f"{found} found when writing it (a sample_id stored twice, or the input "
                "changed meanwhile): materialize release_mix again"
            )
        layout = SourceLayout(
            source=source,
            asset=RELEASE_INPUT_ASSET,
            license=project.source(source).license,
            shards=math.ceil(len(chosen) / recipe.shard_rows),
            shard_rows=recipe.shard_rows,
            tar_rows=recipe.webdataset_shard_rows,
            pairs=recipe.webdataset and is_caption_source(project, source),
            obelics=obelics and is_interleaved_source(project, source),
            include_sample_id=recipe.include_sample_id,
            blur_faces=recipe.blur_faces,
            signals=IMAGE_SIGNALS,
        )
        layouts.append((layout, ordered))
    engine = TaskEngine(RELEASE, project.execution)
    files, index = write_sources(layouts, turns, storage, staging, engine)
    return [layout.source for layout, _ in layouts], files, index, engine.summary()


def _diversity(
    storage: Storage, sources: list[str], released: pa.Array
) -> tuple[float | None, str]:
    for column in ("copy_embedding", "clip_embedding"):
        accumulator = CovarianceAccumulator()
        for source in sources:
            if not storage.has_partition(SIGNATURES, source):
                continue
            for batch in storage.iter_batches(
                SIGNATURES, source, columns=["sample_id", column], batch_size=16_384
            ):
                keep = pc.is_in(batch.column("sample_id"), released)
                accumulator.update_table(pa.Table.from_batches([batch.filter(keep)]), column)
        if accumulator.n >= 2:
            return accumulator.result().score, column
    return None, "none"


def card_tables(
    storage: Storage,
    stage_tables: Iterable[StageTable],
    sql_dir: Path,
    index: pa.Table,
    rejects: pa.Table,
) -> dict[str, pa.Table]:
    """The card's SQL models, run over the stages and over this release's own rows."""
    stage_tables = [t for t in stage_tables if t.asset != RELEASE]
    views = {t.asset for t in stage_tables} | {f"{t.asset}_rejects" for t in stage_tables}
    models = load_models(sql_dir, views | {RELEASE, f"{RELEASE}_rejects"})
    with connect_in_memory(storage, stage_tables) as connection:
        connection.register(RELEASE, index)
        connection.register(f"{RELEASE}_rejects", rejects)
        return run_models(connection, models, list(CARD_MODELS))


def build_release_mix(
    project: ProjectConfig,
    storage: Storage,
    stage_tables: Iterable[StageTable],
    sql_dir: Path,
    gate: ReleaseGate | None = None,
) -> ReleaseResult:
    """Select, write shards + card + manifest atomically, and record the release index.
    ``gate`` holds the reviewers' decisions (none: every train source may enter)."""
    recipe = project.release
    known = set(project.source_names)
    unknown = [s.name for s in recipe.sources if s.name not in known]
    if unknown:
        raise ValueError(f"release.sources names {unknown[0]!r}, which is not a configured source")
    sources = _input_partitions(project, storage)
    candidates, flat = _select(project, storage, sources, gate or ReleaseGate())
    rejects = candidates.rejects()
    input_rows = sum(storage.count_rows(RELEASE_INPUT_ASSET, s) for s in sources)
    waiting = awaiting_review(project, gate)
    if waiting:
        # No source approved yet: no release directory is written (a previous release stays as
        # it is); the index is empty and every input row is left out with its reason.
        index = RELEASE_INDEX_SCHEMA.empty_table()
        with storage.writer(
            RELEASE, None, RELEASE_INDEX_SCHEMA, reject_schema=REJECT_SCHEMA
        ) as writer:
            writer.write(index)
            writer.reject(rejects)
        facts = CardFacts(RELEASE_INPUT_ASSET, [], None, "none", [])
        return ReleaseResult(index, rejects, "", [], {}, facts, input_rows, awaiting_review=waiting)
    with storage.staged_directory(RELEASES_DIR, recipe.name, recipe.version) as staging:
        configs, written, index, tasks = _write_sources(project, storage, candidates, staging)
        files = ReleaseFiles(storage.fs, staging, written)
        tables = card_tables(storage, stage_tables, sql_dir, index, rejects)
        diversity, embedding = _diversity(storage, sources, candidates.released())
        facts = CardFacts(
            RELEASE_INPUT_ASSET,
            configs,
            diversity,
            embedding,
            [f.as_dict() for f in flat],
            cleaning_notes=[project.clean_params().web_pair_scope()],
            interleaved=[
                s
                for s in configs
                if recipe.interleaved_layout == "obelics" and is_interleaved_source(project, s)
            ],
            signals=signal_distribution(candidates.signal_table(), recipe),
        )
        card = render_card(recipe, tables, facts).encode()
        files.write("README.md", card, 0, "card")
        header = {
            "name": recipe.name,
            "version": recipe.version,
            "seed": recipe.seed,
            "input_asset": RELEASE_INPUT_ASSET,
            "samples": index.num_rows,
            "recipe": recipe.model_dump(mode="json"),
        }
        with storage.fs.open_output_stream(posixpath.join(staging, "manifest.json")) as stream:
            stream.write(files.manifest(header))
    with storage.writer(RELEASE, None, RELEASE_INDEX_SCHEMA, reject_schema=REJECT_SCHEMA) as writer:
        writer.write(index)
        writer.reject(rejects)
    return ReleaseResult(
        index=index,
        rejects=rejects,
        path=storage.uri(RELEASES_DIR, recipe.name, recipe.version),
        files=files.files,
        tables=tables,
        facts=facts,
        input_rows=input_rows,
        extra=tasks,
    )
