"""The pipeline declared once: every stage, in order, with what Dagster and the tools need.

`STAGES` is the one place a stage is named. The Dagster assets (`defs/`), the jobs and the
order the CLI and the stale-partition schedule run them in, the code-version hashes that make a
changed `stages.*` section stale, and the DuckDB catalog's views are generated from it
(docs/stages.md). Build functions and schemas are dotted paths, resolved when a stage runs,
so loading the definitions imports neither torch nor the stages' modules. No Dagster here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

RAW = "raw_samples"
UNIFIED = "unified_samples"
CLEANED = "cleaned_samples"
SIGNATURES = "image_signatures"
DUPLICATES = "duplicate_clusters"
DEDUPLICATED = "deduplicated_samples"
BENCHMARK_INDEX = "benchmark_index"
DECONTAMINATED = "decontaminated_samples"
QUALITY_MODEL = "quality_classifier"
SCORED = "scored_samples"
CONCEPTS = "concept_clusters"
RELEASE = "release_mix"


def resolve(path: str) -> Any:
    """The object a ``"package.module:attribute"`` path names, imported now."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Job:
    """A Dagster job: a step of the whole pipeline's run, over the stages whose `job` it is."""

    name: str
    description: str


JOBS: tuple[Job, ...] = (
    Job("per_source_job", "Ingest, clean and sign one source partition."),
    Job("cross_source_job", "Duplicate clusters and the benchmark index, over every source."),
    Job("filter_job", "Deduplicate and decontaminate one source partition."),
    Job("quality_model_job", "Train the learned quality classifier over every train source."),
    Job(
        "scoring_job",
        "CLIP score, learned quality score and judge ratings of one source partition.",
    ),
    Job(
        "global_job",
        "Concept clusters, the release mix, SQL statistics models and the DuckDB catalog.",
    ),
)
"""In the order that runs the whole pipeline."""


@dataclass(frozen=True)
class Stage:
    """One stage: an asset partitioned by source (`per_source`) or one over every source.

    ``params``: the `stages.*` sections of the project file it reads (``release`` is the
    top-level recipe); a change to one makes the stage stale. ``build``: its core function as a
    dotted path (per-source: ``(config, source, storage, progress) -> StageReport``; global:
    ``(config, storage) -> (table, stats)`` or a model). ``schema``: its Parquet output's
    schema as a dotted path (None: it writes no table, and has no catalog view)."""

    name: str
    per_source: bool
    upstream: tuple[str, ...]
    params: tuple[str, ...]
    build: str
    schema: str | None
    group: str
    job: str
    kinds: frozenset[str]
    description: str
    pool: str | None = None
    code_version: str = "1"
    # Each byte stored once (core/stored.py): a stage that decides stores `sample_id` and its
    # own columns, its rows being `rows_of`'s rows of those ids; in a stage with `images_of`,
    # an image whose `bytes` is null is image j of the same sample in `images_of`.
    rows_of: str | None = None
    images_of: str | None = None

    @property
    def has_table(self) -> bool:
        return self.schema is not None


_PY = frozenset({"parquet", "python"})
_GPU = frozenset({"parquet", "pytorch"})
_CLEANED_SCHEMA = "fineharbor.core.cleaning.stage:CLEANED_SCHEMA"

STAGES: tuple[Stage, ...] = (
    Stage(
        RAW,
        per_source=True,
        upstream=(),
        params=("ingest",),
        build="fineharbor.core.ingest:build_raw_samples",
        schema="fineharbor.core.schema:RAW_SCHEMA",
        group="ingest",
        job="per_source_job",
        kinds=_PY,
        description=(
            "Each source's records as read: original fields kept as JSON in `record`, referenced "
            "images fetched into `images` (local files, tar members, or HTTP downloads for URL "
            "lists, img2dataset-style with SSRF protection and X-Robots-Tag noai honoured), "
            "with provenance (`origin_uri`, `origin_key`). Unreadable records and failed "
            "fetches go to the rejects ledger. Downloads are kept under `downloads/` and reused "
            "on re-runs; a re-run that would turn published images into download failures is "
            "not published."
        ),
    ),
    Stage(
        UNIFIED,
        per_source=True,
        upstream=(RAW,),
        params=(),  # the mapping is the source's own config, part of its source state
        build="fineharbor.core.ingest:build_unified_samples",
        schema="fineharbor.core.schema:UNIFIED_SCHEMA",
        group="ingest",
        job="per_source_job",
        kinds=_PY,
        images_of=RAW,
        description=(
            "Records mapped into the unified, FineVision-compatible schema (`images`, `texts` "
            "as user/assistant turns, `source`) by the source's declared mapping (presets "
            "finevision/cauldron, llava, laion, webdataset_caption, or field paths). "
            "Unmappable records are rejected with a reason."
        ),
    ),
    Stage(
        CLEANED,
        per_source=True,
        upstream=(UNIFIED,),
        params=("clean",),
        build="fineharbor.core.cleaning.build:build_cleaned_samples",
        schema=_CLEANED_SCHEMA,
        group="clean",
        job="per_source_job",
        kinds=_PY,
        images_of=UNIFIED,
        description=(
            "Unified samples after FineVision, LAION and DanQing cleaning: every image fully "
            "decoded in worker processes (format allowlist, pixel limit before decoding, "
            "per-image time limit), EXIF-oriented and converted to RGB, longest side resized to "
            "2048; LAION's 5 KB / 5-character rules; min side, aspect ratio, blur and entropy; "
            "per-turn 8192-token cap, language allowlist (lingua), DanQing's 5-60 words, "
            "repetition, special characters, [UNK] junk and safety terms; domain trust; GUI "
            "actions normalised to one action space. Each reject names its rule, the measured "
            "value and the threshold."
        ),
    ),
    Stage(
        SIGNATURES,
        per_source=True,
        upstream=(CLEANED,),
        params=("signatures",),
        build="fineharbor.core.signatures.build:build_image_signatures",
        schema="fineharbor.core.signatures.compute:SIGNATURE_SCHEMA",
        group="dedup",
        job="per_source_job",
        kinds=_GPU,
        pool="gpu",
        description=(
            "Per image of the cleaned samples: sha256 of the bytes and of the decoded pixels (a "
            "lossless re-encode still matches), a 64-bit perceptual hash and that of the mirror "
            "image, a copy-detection embedding (SSCD TorchScript, 320x320, ImageNet norm, "
            "L2-normalised, as FineVision) and a CLIP image embedding (open_clip), float16. The "
            "GPU op: embedders load once per process, batch, and use CUDA + half precision."
        ),
    ),
    Stage(
        DUPLICATES,
        per_source=False,
        upstream=(SIGNATURES, CLEANED),
        params=("dedup",),
        build="fineharbor.core.dedup.build:build_duplicate_clusters",
        schema="fineharbor.core.dedup.clusters:DUPLICATE_SCHEMA",
        group="dedup",
        job="cross_source_job",
        kinds=_PY,
        description=(
            "Cross-source duplicate groups over every train source: exact (pixel sha256), near "
            "(perceptual-hash Hamming, copy-detection / CLIP cosine with faiss), LAION's URL + "
            "caption, and text-only (normalised hash, MinHash LSH). Pairs are union-found into "
            "clusters (DanQing); the member kept is chosen by source priority, then resolution, "
            "then quality, ties by sample_id. Metadata: duplicates per source pair, cluster "
            "sizes and FineVision's diversity score."
        ),
    ),
    Stage(
        DEDUPLICATED,
        per_source=True,
        upstream=(CLEANED, DUPLICATES),
        params=("dedup",),
        build="fineharbor.core.dedup.build:build_deduplicated_samples",
        schema=_CLEANED_SCHEMA,
        group="dedup",
        job="filter_job",
        kinds=_PY,
        rows_of=CLEANED,
        description=(
            "Cleaned samples minus the non-kept members of duplicate clusters. Each reject "
            "(`exact_duplicate` / `near_duplicate`) names the kept sample (`duplicate_of`), the "
            "signature type (`signal`) and the similarity. Benchmark sources pass unchanged."
        ),
    ),
    Stage(
        BENCHMARK_INDEX,
        per_source=False,
        upstream=(SIGNATURES, CLEANED),
        params=("decontam", "signatures"),
        build="fineharbor.core.decontam.build:build_benchmark_index",
        schema="fineharbor.core.decontam.index:BENCHMARK_INDEX_SCHEMA",
        group="decontam",
        job="cross_source_job",
        kinds=_PY,
        description=(
            "Every benchmark source's (role: benchmark) image signatures - the same "
            "copy-detection and perceptual hashes as dedup - and its questions' word 13-grams, "
            "plus benchmark embeddings imported from Parquet (e.g. FineVision's published "
            "lmms-eval embeddings), checked to come from the same embedder."
        ),
    ),
    Stage(
        DECONTAMINATED,
        per_source=True,
        upstream=(DEDUPLICATED, BENCHMARK_INDEX, SIGNATURES),
        params=("decontam",),
        build="fineharbor.core.decontam.build:build_decontaminated_samples",
        schema=_CLEANED_SCHEMA,
        group="decontam",
        job="filter_job",
        kinds=_PY,
        rows_of=CLEANED,
        description=(
            "Deduplicated samples minus those matching a benchmark (FineVision): any image "
            "within cosine >= 0.95 of a benchmark image (copy-detection embedding), or a close "
            "perceptual hash, or any turn sharing a word 13-gram with a benchmark question. "
            "Each `benchmark_match` reject names the benchmark, the matched sample, the signal "
            "and the similarity. A benchmark source's own samples are rejected as "
            "`benchmark_source`."
        ),
    ),
    Stage(
        QUALITY_MODEL,
        per_source=False,
        upstream=(DECONTAMINATED,),
        # the judge writes the semi-synthetic texts (synthetic_texts: mllm, rewrite_with_judge)
        params=("clip_score", "quality_classifier", "judge"),
        build="fineharbor.core.quality.stage:train_quality_model",
        schema=None,
        group="quality",
        job="quality_model_job",
        kinds=frozenset({"pytorch", "python"}),
        pool="gpu",
        description=(
            "UniFilter-style learned quality classifier, saved under "
            "FINEHARBOR_HOME/models/quality_classifier. Built from the decontaminated samples "
            "of every train source: each real image is paired with texts at four quality levels "
            "(3 its own text, 2 one attribute made wrong, 1 vague or generic, 0 another image's "
            "text), and a two-layer MLP regresses the level from frozen CLIP image and text "
            "features (`stages.clip_score` model; interleaved documents: mean-pooled images, "
            "chunked texts), or with `architecture: mllm` UniFilter's vision tower + AvgPool "
            "projector + small LM reads images and text in document order. `synthetic_texts: "
            "mllm` has the judge's vision model write all four levels "
            "(docs/quality-classifier.md). Metadata: held-out accuracy and confusion matrix "
            "over whole held-out images."
        ),
    ),
    Stage(
        SCORED,
        per_source=True,
        upstream=(DECONTAMINATED, QUALITY_MODEL),
        params=("clip_score", "quality_classifier", "judge", "signals"),
        build="fineharbor.core.quality.stage:build_scored_samples",
        schema="fineharbor.core.quality.stage:SCORED_SCHEMA",
        group="quality",
        job="scoring_job",
        kinds=_GPU,
        pool="gpu",
        rows_of=CLEANED,
        code_version="2",  # 2: the image signal columns
        description=(
            "Every decontaminated sample (none dropped: thresholds apply in the release mix) "
            "with `clip_score` (image-text cosine of the `stages.clip_score` open_clip model: "
            "LAION keeps >= 0.30 with ViT-B/32, DanQing also drops implausibly high "
            "OCR-dominated pairs; text = every turn joined, image = best-matching image), "
            "`quality_score` (the learned classifier, 0-3) and FineVision's judge ratings 1-5 "
            "per turn (`formatting`, `relevance`, `visual_dependency`, `image_correspondence` "
            "as `*_ratings` lists aligned with `texts`, and `*_min`), null when "
            "`stages.judge.backend` is none. Judgments are cached by (model, prompt version, "
            "sample, turn) under FINEHARBOR_STATE/judge_cache. The GPU op: models load once "
            "per process, batch, CUDA + half precision. Image signals (`stages.signals`, "
            "docs/signals.md): `punsafe` (LAION's CLIP NSFW head), `aesthetic_score` (LAION "
            "aesthetic predictor v2), `pwatermark` (LAION-5B's watermark CNN), `face_count` and "
            "`face_boxes` (OpenCV Haar cascade), null when not configured."
        ),
    ),
    Stage(
        CONCEPTS,
        per_source=False,
        upstream=(SCORED, SIGNATURES),
        params=("concepts",),
        build="fineharbor.core.release.build:build_concept_clusters",
        schema="fineharbor.core.release.build:CONCEPT_SCHEMA",
        group="release",
        job="global_job",
        kinds=frozenset({"parquet", "faiss"}),
        description=(
            "Hierarchical k-means (Vo et al. 2024) over one vector per release-input sample "
            "(the mean of its images' copy-detection or CLIP embeddings from image_signatures): "
            "level 1 clusters the samples, each higher level clusters the previous level's "
            "centroids; k-means++ seeding, 50 faiss iterations, resampling steps with a "
            "per-level sample size. Holds each sample's cluster at every level (`clusters`, "
            "level 1 first) and its squared distance to its level-1 centroid."
        ),
    ),
    Stage(
        RELEASE,
        per_source=False,
        upstream=(SCORED, CONCEPTS),
        params=("release", "concepts"),  # and, when the recipe requires them, the reviews
        build="fineharbor.core.release.build:build_release_mix",
        schema="fineharbor.core.release.shards:RELEASE_INDEX_SCHEMA",
        group="release",
        job="global_job",
        kinds=frozenset({"parquet", "duckdb"}),
        description=(
            "The release written by the recipe in `release:`: train sources with weights and "
            "caps, CLIP score bounds (LAION lower, DanQing upper), the learned quality "
            "threshold, LAION's punsafe / pwatermark / aesthetic thresholds (the one place a "
            "score removes samples), judge minimums with FineVision's turn-level filtering, "
            "and optional "
            "balanced concept sampling (Vo et al.). Writes `releases/<name>/<version>/` "
            "atomically: Parquet shards in the `datasets` layout with FineVision's columns "
            "(interleaved documents in the OBELICS layout), "
            "WebDataset tars for caption pairs on request, a dataset card whose numbers come "
            "from the SQL models, and manifest.json with a sha256 per file. This table indexes "
            "the released samples; left-out samples are in its rejects with a reason."
        ),
    ),
)
"""Every stage, in pipeline order (an upstream stage comes before the stages it feeds)."""

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def stage(name: str) -> Stage:
    return BY_NAME[name]


def job_stages(job: str) -> list[Stage]:
    """The stages a job runs, in pipeline order."""
    return [s for s in STAGES if s.job == job]


def per_partition(job: str) -> bool:
    """Whether a job runs once per source partition (its stages are all per-source)."""
    return all(s.per_source for s in job_stages(job))


def stage_params() -> dict[str, tuple[str, ...]]:
    """The `stages.*` sections each stage that reads any reads: its staleness hash's input."""
    return {s.name: s.params for s in STAGES if s.params}


def table_stages() -> list[Stage]:
    """The stages that write a Parquet table (each has a catalog view), in pipeline order."""
    return [s for s in STAGES if s.has_table]


def markdown() -> str:
    """The stage table as docs/stages.md shows it (a test keeps the two the same)."""
    rows = [
        "| stage | runs | upstream | reads `stages.*` | group | job | kinds | pool |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in STAGES:
        cells = (
            f"`{s.name}`",
            "per source" if s.per_source else "once",
            ", ".join(f"`{u}`" for u in s.upstream) or "-",
            ", ".join(s.params) or "-",
            s.group,
            s.job,
            ", ".join(sorted(s.kinds)),
            s.pool or "-",
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
