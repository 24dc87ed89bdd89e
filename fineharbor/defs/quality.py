"""Quality assets: the UniFilter-style classifier (global) and scored_samples (per source)."""

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

from fineharbor.core.config import StageParams
from fineharbor.core.judge.params import JudgeParams
from fineharbor.core.judge.prompts import AXES, PROMPT_VERSIONS
from fineharbor.core.judge.rate import make_backends
from fineharbor.core.pipeline import QUALITY_MODEL, SCORED
from fineharbor.core.quality.params import LEVELS, ClipScoreParams
from fineharbor.core.stage_io import StageReport
from fineharbor.defs.factory import StageRun, global_stage, per_source_stage
from fineharbor.defs.reporting import histogram_markdown, markdown_table
from fineharbor.defs.resources import FineharborProject, ModelCache

if TYPE_CHECKING:
    from fineharbor.core.quality.stage import ScoringStats


class QualityModelsResource(dg.ConfigurableResource):
    """The scoring CLIP (`stages.clip_score`) and the judge backends (`stages.judge`), each
    loaded once per run and shared by its partitions; CUDA and half precision when present."""

    _models: ModelCache = PrivateAttr(default_factory=ModelCache)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._models.clear()

    def clip(self, params: ClipScoreParams):
        """The open_clip embedder, or None when `stages.clip_score.model` is null or its model
        is not on this machine (see `clip_note`)."""
        return self._clip(params)[0]

    def clip_note(self, params: ClipScoreParams) -> str:
        """Why there is no scoring CLIP ("" when there is one)."""
        return self._clip(params)[1]

    def _clip(self, params: ClipScoreParams) -> tuple:
        from fineharbor.core.quality.clip_score import scoring_clip

        return self._models.get("clip", params.model_dump_json(), lambda: scoring_clip(params))

    def signals(self, stages: StageParams, embedder):
        """The signal models of `stages.signals` (their heads reuse `embedder` when they read
        the scoring CLIP)."""
        from fineharbor.core.quality.signals import load_signal_models

        return self._models.get(
            "signals",
            stages.signals.model_dump_json() + stages.clip_score.model_dump_json(),
            lambda: load_signal_models(stages.signals, stages.clip_score, embedder),
        )

    def judges(self, params: JudgeParams) -> tuple:
        """(text backend, vision backend); (None, None) when the judge is off."""
        return self._models.get("judge", params.model_dump_json(), lambda: make_backends(params))


@global_stage(QUALITY_MODEL)
def quality_classifier(
    context: dg.AssetExecutionContext, project: FineharborProject, models: QualityModelsResource
) -> dg.MaterializeResult:
    stages = project.config.stages
    embedder = models.clip(stages.clip_score)
    if embedder is None and stages.quality_classifier.architecture == "clip_mlp":
        note = models.clip_note(stages.clip_score)
        context.log.info(f"no classifier is trained: {note}")
        return dg.MaterializeResult(metadata={"trained": False, "why_not": note})
    # torch and transformers load here, not when the definitions load (every CLI plan does)
    from fineharbor.core.quality.stage import train_quality_model

    text_judge, _ = models.judges(stages.judge)
    model, stats = train_quality_model(
        project.config,
        project.storage,
        embedder,
        text_judge,
        cache_dir=project.state_path / "judge_cache",
    )
    report = model.report
    assert report is not None
    confusion = markdown_table(
        ["true \\ predicted", *map(str, LEVELS)],
        [(level, *row) for level, row in zip(LEVELS, report.confusion, strict=True)],
    )
    accuracy = report.heldout_accuracy
    kinds = markdown_table(
        ["kind", "real samples", "examples", *(f"level {level}" for level in LEVELS), "balance"],
        [
            (kind, k["real_samples"], k["examples"], *k["by_level"].values(), k["balance"])
            for kind, k in stats["examples_by_kind"].items()
        ],
    )
    return dg.MaterializeResult(
        metadata={
            "trained": True,
            "architecture": stats["architecture"],
            "model": stats["model"],
            "heldout_accuracy": round(accuracy, 4) if accuracy is not None else "n/a",
            "heldout_mae": round(report.heldout_mae, 4) if report.heldout_mae is not None else "",
            "train_accuracy": round(report.train_accuracy, 4),
            "training_examples": report.n_train,
            "heldout_examples": report.n_heldout,
            "real_samples": stats["real_samples"],
            "examples_by_level": dg.MetadataValue.json(
                {str(k): v for k, v in stats["examples_by_level"].items()}
            ),
            "examples_by_rule": dg.MetadataValue.json(stats["examples_by_rule"]),
            "examples_by_kind": dg.MetadataValue.json(stats["examples_by_kind"]),
            "texts_rewritten_by": stats["rewritten_by"],
            "synthetic_texts": stats["synthetic"] or "rules",
            "rewrite_failures": stats["rewrite_failures"],
            "mean_score_by_level": dg.MetadataValue.json(report.level_mean_score),
            "sources": dg.MetadataValue.json(stats["sources"]),
            "seconds": round(report.seconds, 2),
            "path": dg.MetadataValue.path(stats["path"]),
            "summary": dg.MetadataValue.md(
                f"{report.summary().splitlines()[0]}\n\n{kinds}\n\n"
                f"### Held-out confusion matrix\n{confusion}"
            ),
        }
    )


def _score_with_models(context: dg.AssetExecutionContext, project: FineharborProject) -> StageRun:
    from fineharbor.core.quality.stage import build_scored_samples, load_quality_model

    models: QualityModelsResource = context.resources.models
    stages = project.config.stages
    on_ray = project.config.execution.on_ray(SCORED)  # then the Ray actors load CLIP
    embedder = None if on_ray else models.clip(stages.clip_score)
    mllm = stages.quality_classifier.architecture == "mllm"
    model = (
        load_quality_model(project.storage)
        if mllm or embedder is not None or (on_ray and stages.clip_score.model)
        else None
    )
    judges = models.judges(stages.judge)
    signals = None if on_ray else models.signals(stages, embedder)

    def run(config, partition, storage, progress):
        report, stats = build_scored_samples(
            config,
            partition,
            storage,
            progress,
            embedder=embedder,
            model=model,
            judges=judges,
            judge_cache_dir=project.state_path / "judge_cache",
            signals=signals,
        )
        report.extra.update(_scoring_metadata(stages, stats, report, judges))
        if not on_ray and embedder is None:
            report.extra["clip_model"] = f"absent: {models.clip_note(stages.clip_score)}"
        return report

    return run


# Models load once per run, with the project's config (overrides do not reach the scorer).
scored_samples = per_source_stage(
    SCORED, setup=_score_with_models, resources={"models"}, reviewed=False
)


def _scoring_metadata(
    stages: StageParams, stats: "ScoringStats", report: StageReport, judges: tuple
) -> dict:
    """Throughput, score histograms and, with a judge, its ratings for one partition."""
    extra = {
        "samples_per_second": round(report.rows_per_second, 1),
        "images_per_second_clip": round(stats.images / stats.clip_seconds, 1)
        if stats.clip_seconds
        else 0.0,
        "clip_model": str(stages.clip_score.model),
        "clip_score_histogram": dg.MetadataValue.md(
            histogram_markdown(stats.clip_scores, "CLIP score", digits=2)
        ),
        "quality_score_histogram": dg.MetadataValue.md(
            histogram_markdown(stats.quality_scores, "Learned quality score (0-3)", digits=1)
        ),
        "judge_backend": stages.judge.backend,
        "signal_seconds": round(stats.signal_seconds, 2),
        **{
            f"{name}_histogram": dg.MetadataValue.md(histogram_markdown(values, name, digits=2))
            for name, values in stats.signals.items()
            if values
        },
    }
    if any(judges):
        extra["judge_prompt_versions"] = dg.MetadataValue.json(dict(PROMPT_VERSIONS))
        extra["ratings_distribution"] = dg.MetadataValue.md(
            markdown_table(
                ["axis", *map(str, range(1, 6)), "parse failures"],
                [
                    (
                        axis,
                        *(stats.rating_counts[axis][r] for r in range(1, 6)),
                        stats.judge.parse_failures[axis],
                    )
                    for axis in AXES
                ],
            )
        )
        extra.update(stats.judge.as_metadata())
    return extra
