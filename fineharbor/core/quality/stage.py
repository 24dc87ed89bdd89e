"""The quality stages as plain functions: train the learned classifier over every train source,
then score each source partition (CLIP score, learned quality score, judge ratings).

``scored_samples`` keeps every row of ``decontaminated_samples`` (no rejects: thresholds are
applied when the release is mixed) and appends ``clip_score``, ``quality_score``, FineVision's
``*_ratings`` / ``*_min`` columns and the image signals of ``stages.signals`` (``punsafe``,
``aesthetic_score``, ``pwatermark``, ``face_count``, ``face_boxes``: docs/signals.md). A score
that is switched off is a null column, never a missing one, so every partition has the same
schema.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from fineharbor.core.cleaning import CLEANED_SCHEMA
from fineharbor.core.config import ProjectConfig, StageParams
from fineharbor.core.distributed.engine import BatchWork, StreamFn, map_partition
from fineharbor.core.judge.backend import JudgeBackend
from fineharbor.core.judge.cache import JudgmentCache
from fineharbor.core.judge.prompts import AXES
from fineharbor.core.judge.rate import (
    RATINGS_SCHEMA,
    JudgeStats,
    rate_samples,
    ratings_column,
)
from fineharbor.core.pipeline import DECONTAMINATED, QUALITY_MODEL, SCORED
from fineharbor.core.quality.classifier import (
    REWRITE_PROMPT_VERSION,
    QualityModel,
    build_quality_training_set,
    llm_rewriter,
    score_quality,
    train_quality_classifier,
)
from fineharbor.core.quality.clip_score import ImageTextEmbedder, clip_scores
from fineharbor.core.quality.faces import BOXES_TYPE, FACE_BOXES, FACE_COUNT
from fineharbor.core.quality.mllm_classifier import META_FILE as MLLM_META_FILE
from fineharbor.core.quality.mllm_classifier import MllmQualityModel, train_mllm_classifier
from fineharbor.core.quality.pixels import (
    MLLM_VISION,
    SCORING_CLIP,
    SIGNAL_CLIP,
    WATERMARK,
    BatchPixels,
    ImagePrep,
    prepared_batches,
)
from fineharbor.core.quality.signals import SIGNAL_COLUMNS, SignalModels, load_signal_models
from fineharbor.core.quality.synthetic import write_level_texts, writer_backend
from fineharbor.core.schema import REJECT_SCHEMA
from fineharbor.core.stage_io import Progress, StageReport, write_stage
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows

QUALITY_MODEL_DIR = ("models", QUALITY_MODEL)
SCORE_BATCH_ROWS = 64

SCORED_SCHEMA = pa.schema(
    [
        *CLEANED_SCHEMA,
        pa.field("clip_score", pa.float32()),
        pa.field("quality_score", pa.float32()),
        *(f for f in RATINGS_SCHEMA if f.name != "sample_id"),
        *(pa.field(name, pa.float32()) for name in SIGNAL_COLUMNS),
        pa.field(FACE_COUNT, pa.int32()),
        pa.field(FACE_BOXES, BOXES_TYPE),
    ]
)


AnyQualityModel = QualityModel | MllmQualityModel


def save_quality_model(model: AnyQualityModel, storage: Storage) -> str:
    """Publish the classifier at ``FINEHARBOR_HOME/models/quality_classifier`` (a directory or
    object storage) through the storage's staged publish: a killed run leaves the old model."""
    with tempfile.TemporaryDirectory(prefix="fineharbor-model-") as tmp:
        model.save(tmp)
        storage.put_directory(tmp, *QUALITY_MODEL_DIR)
    return storage.uri(*QUALITY_MODEL_DIR)


def load_quality_model(storage: Storage) -> AnyQualityModel:
    """The classifier ``quality_classifier`` published, of either architecture (copied to a
    temporary local directory first when the storage is object storage)."""
    with storage.local_directory(*QUALITY_MODEL_DIR) as directory:
        if (Path(directory) / MLLM_META_FILE).is_file():
            return MllmQualityModel.load(directory)
        return QualityModel.load(directory)


def train_samples(
    project: ProjectConfig, storage: Storage, cap: int
) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """Decontaminated samples of every train source, at most ``cap`` in all, spread evenly."""
    sources = [
        p for p in project.role_partitions("train") if storage.has_partition(DECONTAMINATED, p)
    ]
    per_source = math.ceil(cap / max(1, len(sources)))

    def batches() -> Iterator[pa.RecordBatch]:
        for name in sources:
            taken = 0
            for batch in read_stage_rows(
                storage,
                DECONTAMINATED,
                name,
                columns=["sample_id", "source", "images", "texts", "segments"],
                batch_size=256,
            ):
                batch = batch.slice(0, per_source - taken)
                taken += batch.num_rows
                yield batch
                if taken >= per_source:
                    break

    return sources, batches()


def train_quality_model(
    project: ProjectConfig,
    storage: Storage,
    embedder: ImageTextEmbedder | None,
    text_judge: JudgeBackend | None = None,
    *,
    writer: JudgeBackend | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[AnyQualityModel, dict]:
    """Build the four-level semi-synthetic set from decontaminated train samples, train the
    classifier of ``architecture``, save it; returns it and its statistics.

    Texts: rule-based (levels 1 and 2 rewritten by ``text_judge`` when ``rewrite_with_judge`` is
    on), or with ``synthetic_texts: mllm`` all four written by ``writer`` (default: the judge's
    vision model, :func:`~fineharbor.core.quality.synthetic.writer_backend`), cached under
    ``cache_dir``. ``clip_mlp`` trains on frozen CLIP features of ``embedder``; ``mllm`` needs no
    CLIP."""
    params = project.stages.quality_classifier
    if params.architecture == "clip_mlp" and embedder is None:
        raise ValueError("architecture clip_mlp needs the scoring CLIP (stages.clip_score.model)")
    if params.rewrite_with_judge and text_judge is None:
        raise ValueError(
            "stages.quality_classifier.rewrite_with_judge needs a text judge: set "
            "stages.judge.backend (openai or transformers) and text_model"
        )
    sources, batches = train_samples(project, storage, params.max_training_samples)
    synthetic = None
    if params.synthetic_texts == "mllm":
        own_writer = writer is None
        writer = writer or writer_backend(project.stages.judge, params.synthetic_max_tokens)
        cache = JudgmentCache(cache_dir) if cache_dir is not None else None
        try:
            train_set, synthetic = write_level_texts(
                batches,
                writer,
                seed=params.seed,
                max_samples=params.max_training_samples,
                cache=cache,
            )
        finally:
            if cache is not None:
                cache.close()
            if own_writer:  # an in-process writer frees its GPU memory before training
                writer.close()
    else:
        train_set = build_quality_training_set(
            batches,
            seed=params.seed,
            max_samples=params.max_training_samples,
            rewrite=llm_rewriter(text_judge) if params.rewrite_with_judge else None,
        )
    if len(train_set.images) < 2:
        raise ValueError(
            f"the quality classifier needs at least 2 decontaminated samples with an image and "
            f"text; the train sources ({', '.join(sources) or 'none'}) have "
            f"{len(train_set.images)}: materialize decontaminated_samples first"
        )
    if params.architecture == "mllm":
        model: AnyQualityModel = train_mllm_classifier(
            train_set, params.mllm, holdout_fraction=params.holdout_fraction, seed=params.seed
        )
        described = "mllm: {vision_model} + AvgPool + {language_model}".format(**model.sources)
    else:
        assert embedder is not None
        model = train_quality_classifier(train_set, embedder, params)
        described = f"clip_mlp: {model.embedder}"
    target = save_quality_model(model, storage)
    if synthetic is not None:
        written_by = f"{synthetic.writer} ({synthetic.prompt_version}), all levels"
    elif params.rewrite_with_judge and text_judge is not None:
        written_by = f"{text_judge.name} ({REWRITE_PROMPT_VERSION})"
    else:
        written_by = "rules only"
    stats = {
        "architecture": params.architecture,
        "model": described,
        "synthetic": synthetic.summary() if synthetic is not None else "",
        "sources": sources,
        "real_samples": len(train_set.images),
        "examples_by_level": train_set.level_counts(),
        "examples_by_rule": train_set.rule_counts(),
        "examples_by_kind": train_set.kind_counts(),
        "rewritten_by": written_by,
        "rewrite_failures": train_set.rewrite_failures,
        "path": target,
    }
    return model, stats


@dataclass
class ScoringStats:
    """What scoring a partition measured, for the asset's metadata."""

    clip_scores: list[float] = field(default_factory=list)
    quality_scores: list[float] = field(default_factory=list)
    rating_counts: dict[str, Counter] = field(default_factory=lambda: {a: Counter() for a in AXES})
    judge: JudgeStats = field(default_factory=JudgeStats)
    images: int = 0
    clip_seconds: float = 0.0
    classifier_seconds: float = 0.0
    signal_seconds: float = 0.0
    signals: dict[str, list] = field(
        default_factory=lambda: {name: [] for name in (*SIGNAL_COLUMNS, FACE_COUNT)}
    )


class _BatchMemo:
    """One batch's embeddings, so the CLIP score and the classifier embed each image and text
    once (and a repeated image once). Made per batch: memory follows the batch. With
    ``pixels`` holding this CLIP's input under ``name``, images are embedded from the tensors
    the loader prepared instead of being decoded here."""

    def __init__(
        self, embedder: ImageTextEmbedder, pixels: BatchPixels | None = None, name: str = ""
    ) -> None:
        self.embedder, self.dim = embedder, embedder.dim
        self.images: dict[bytes, np.ndarray] = {}
        self.texts: dict[str, np.ndarray] = {}
        self._embed_images = embedder.embed_images
        if pixels is not None and name in pixels:
            forward = embedder.embed_tensors  # type: ignore[attr-defined]
            self._embed_images = partial(pixels.embed, name, embed_tensors=forward, dim=self.dim)

    @staticmethod
    def _lookup(items: list, memo: dict, embed) -> np.ndarray:
        missing = [item for item in dict.fromkeys(items) if item not in memo]
        if missing:
            memo.update(zip(missing, embed(missing), strict=True))
        if not items:
            return np.zeros((0, 0), np.float32)
        return np.stack([memo[item] for item in items])

    def embed_images(self, images) -> np.ndarray:
        out = self._lookup(list(images), self.images, self._embed_images)
        return out.reshape(-1, self.dim)

    def embed_texts(self, texts) -> np.ndarray:
        out = self._lookup(list(texts), self.texts, self.embedder.embed_texts)
        return out.reshape(-1, self.dim)


def _null_ratings(rows: int) -> dict[str, pa.Array]:
    return {f.name: pa.nulls(rows, f.type) for f in RATINGS_SCHEMA if f.name != "sample_id"}


def _score_batch(
    batch: pa.RecordBatch,
    embedder: ImageTextEmbedder | None,
    model: AnyQualityModel | None,
    judges: tuple,
    params: StageParams,
    cache: JudgmentCache | None,
    stats: ScoringStats,
    signals: SignalModels | None = None,
    pixels: BatchPixels | None = None,
) -> pa.Table:
    table = pa.Table.from_batches([batch])
    rows = table.num_rows
    stats.images += sum(len(images or []) for images in table.column("images").to_pylist())
    clip = pa.nulls(rows, pa.float32())
    quality = pa.nulls(rows, pa.float32())
    if embedder is not None:
        embedder = _BatchMemo(embedder, pixels, SCORING_CLIP)
        started = time.perf_counter()
        clip = clip_scores(table, embedder, params.clip_score)
        stats.clip_seconds += time.perf_counter() - started
    if isinstance(model, MllmQualityModel):  # reads images and text itself, no CLIP
        started = time.perf_counter()
        quality = model.score_samples(table, pixels)
        stats.classifier_seconds += time.perf_counter() - started
    elif model is not None and embedder is not None:
        started = time.perf_counter()
        quality = score_quality(table, model, embedder)
        stats.classifier_seconds += time.perf_counter() - started
    stats.clip_scores += [v for v in clip.to_pylist() if v is not None]
    stats.quality_scores += [v for v in quality.to_pylist() if v is not None]
    columns = {"clip_score": clip, "quality_score": quality}
    started = time.perf_counter()
    signals = signals or SignalModels()
    # the heads read the scoring CLIP's per-batch memo when they share it: each image once
    if signals.shares_scoring_clip:
        heads_clip = embedder
    elif signals.embedder is not None:
        heads_clip = _BatchMemo(signals.embedder, pixels, SIGNAL_CLIP)
    else:
        heads_clip = None
    columns.update(signals.columns(table, heads_clip, pixels))
    stats.signal_seconds += time.perf_counter() - started
    for name in (*SIGNAL_COLUMNS, FACE_COUNT):
        stats.signals[name] += [v for v in columns[name].to_pylist() if v is not None]
    if any(judges):
        ratings, judge_stats = rate_samples(table, *judges, params.judge, cache)
        stats.judge = stats.judge.merge(judge_stats)
        for axis in AXES:
            for turn_ratings in ratings.column(ratings_column(axis)).to_pylist():
                stats.rating_counts[axis].update(r for r in turn_ratings or [] if r is not None)
        columns.update(
            {f.name: ratings.column(f.name) for f in RATINGS_SCHEMA if f.name != "sample_id"}
        )
    else:
        columns.update(_null_ratings(rows))
    for name, values in columns.items():
        table = table.append_column(SCORED_SCHEMA.field(name), values)
    return table.select(SCORED_SCHEMA.names)


def build_scored_samples(
    project: ProjectConfig,
    source_name: str,
    storage: Storage,
    progress: Progress | None = None,
    *,
    embedder: ImageTextEmbedder | None = None,
    model: AnyQualityModel | None = None,
    judges: tuple = (None, None),
    judge_cache_dir: str | Path | None = None,
    signals: SignalModels | None = None,
) -> tuple[StageReport, ScoringStats]:
    """Every decontaminated sample of ``source_name`` with its scores appended (no rejects)."""
    project.source(source_name)
    stats = ScoringStats()
    cache = JudgmentCache(judge_cache_dir) if judge_cache_dir and any(judges) else None

    on_ray = project.execution.on_ray(SCORED)
    # Ray actors load the classifier from the storage root (a shared volume or s3://) themselves.
    model_root = storage.uri() if model is not None and on_ray else None
    here = ScoringModels(embedder, model, signals, judges, cache, stats)
    work = BatchWork(
        SCORED, _score_in_worker, (project.stages, model_root), gpu=True, models={"loaded": here}
    )
    mapped = map_partition(
        project.execution,
        storage,
        DECONTAMINATED,
        source_name,
        work,
        batch_size=SCORE_BATCH_ROWS,
        progress=progress,
    )
    try:
        report = write_stage(
            storage,
            SCORED,
            source_name,
            SCORED_SCHEMA,
            _recounted(mapped, stats) if on_ray else mapped,
            lambda: storage.count_rows(DECONTAMINATED, source_name),
        )
        report.extra.update(mapped.info)
    finally:
        if cache is not None:
            cache.close()
    return report, stats


@dataclass
class ScoringModels:
    """What scoring runs with: models loaded once, the judges and the statistics it fills."""

    embedder: ImageTextEmbedder | None = None
    model: AnyQualityModel | None = None
    signals: SignalModels | None = None
    judges: tuple = (None, None)
    cache: JudgmentCache | None = None
    stats: ScoringStats = field(default_factory=ScoringStats)


def _score_in_worker(
    params: StageParams, model_root: str | None, loaded: ScoringModels | None = None
) -> StreamFn:
    """Scoring with the models ``loaded`` in this process, or with the ones a Ray actor loads
    once: CLIP and the classifier, no judge (the config refuses scored_samples on Ray with a
    judge), its own statistics (the driver recounts scores from the rows)."""
    if loaded is None:
        from fineharbor.core.quality.clip_score import scoring_clip

        embedder, _ = scoring_clip(params.clip_score)
        mllm = params.quality_classifier.architecture == "mllm"
        wanted = model_root is not None and (embedder is not None or mllm)
        model = load_quality_model(Storage(model_root)) if wanted else None
        signals = load_signal_models(params.signals, params.clip_score, embedder)
        loaded = ScoringModels(embedder, model, signals)
    m = loaded
    prep, pin = image_prep(m)
    loader = params.clip_score

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.Table, pa.Table]]:
        for batch, pixels in prepared_batches(
            batches,
            prep,
            num_workers=loader.num_workers,
            prefetch_factor=loader.prefetch_factor,
            pin_memory=pin,
        ):
            yield (
                _score_batch(
                    batch,
                    m.embedder,
                    m.model,
                    m.judges,
                    params,
                    m.cache,
                    m.stats,
                    m.signals,
                    pixels,
                ),
                REJECT_SCHEMA.empty_table(),
            )

    return run


def _reads_pixels(model) -> bool:
    """Whether a model takes prepared tensors: the open_clip embedders, the watermark model
    (an embedder without them, e.g. a test's fake, embeds bytes itself)."""
    return all(hasattr(model, a) for a in ("transform", "device")) and (
        hasattr(model, "embed_tensors") or hasattr(model, "score_pixels")
    )


def image_prep(models: ScoringModels) -> tuple[ImagePrep | None, bool]:
    """(what the loader workers prepare for ``models``, whether to pin memory: a model is on
    CUDA); None when no model reads pixels (an embedder without ``transform`` still embeds
    bytes itself)."""
    signals = models.signals or SignalModels()
    readers = {
        SCORING_CLIP: models.embedder,
        SIGNAL_CLIP: None if signals.shares_scoring_clip else signals.embedder,
        WATERMARK: signals.watermark,
    }
    readers = {name: m for name, m in readers.items() if m is not None and _reads_pixels(m)}
    transforms = {name: m.transform for name, m in readers.items()}
    devices = [m.device for m in readers.values()]
    if isinstance(models.model, MllmQualityModel):
        transforms[MLLM_VISION] = models.model.image_transform()
        devices.append(models.model.device)
    if not transforms and signals.faces is None:
        return None, False
    pin = any(getattr(device, "type", "cpu") == "cuda" for device in devices)
    return ImagePrep(transforms, signals.faces), pin


def _recounted(
    pairs: Iterator[tuple[pa.Table, pa.Table]], stats: ScoringStats
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Fill ``stats`` from rows scored elsewhere (model timings stay with the workers)."""
    for kept, rejected in pairs:
        stats.images += sum(len(images or []) for images in kept.column("images").to_pylist())
        stats.clip_scores += [v for v in kept.column("clip_score").to_pylist() if v is not None]
        stats.quality_scores += [
            v for v in kept.column("quality_score").to_pylist() if v is not None
        ]
        for name, values in stats.signals.items():
            values += [v for v in kept.column(name).to_pylist() if v is not None]
        yield kept, rejected
