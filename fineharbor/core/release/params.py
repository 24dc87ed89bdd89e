"""The release recipe (``release:`` in ``fineharbor.yaml``): what goes into a release and how.

Filters apply in this order: source selection, score thresholds (CLIP bounds, learned quality,
the image signals punsafe / pwatermark / aesthetic_score, judge minimums with FineVision's
turn-level filtering), per-source weight and cap, then balanced concept sampling. This is the
only place a score removes samples: the scoring stage measures and keeps every row. A threshold
left at None is not applied; the papers' values are in the descriptions and in the shipped
``fineharbor.yaml``. A threshold whose score column the release input lacks is an error naming
the stage that produces the column.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fineharbor.core.strict import StrictModel

# The papers' thresholds (/work/shared/reference/papers.md, LAION section; LAION-Aesthetics v2:
# the improved_aesthetics_{5,6,6.5}plus subsets of the LAION blog post "LAION-Aesthetics").
LAION_400M_CLIP = 0.30  # OpenAI CLIP ViT-B/32; "0.28-0.29 also seemed okay"
LAION_5B_CLIP = 0.28  # English subset, ViT-B/32
LAION_5B_MULTI_CLIP = 0.26  # multilingual / no-language subsets, mCLIP
LAION_PUNSAFE = 0.5  # LAION-5B: unsafe if punsafe > 0.5
LAION_PWATERMARK = 0.8  # LAION-5B: watermark if pwatermark > 0.8
LAION_AESTHETICS_V2 = (5.0, 6.0, 6.5)

RATING_AXES = ("relevance", "image_correspondence", "visual_dependency", "formatting")
_VERSION = re.compile(r"\A[0-9A-Za-z][0-9A-Za-z._\-]{0,63}\Z")


class SourceMix(StrictModel):
    """One source's share of the release."""

    name: str
    weight: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fraction of the source's samples that passed the filters kept (a seeded "
        "random subset); never above 1, so a release holds no repeated samples",
    )
    cap: int | None = Field(None, ge=0, description="at most this many samples from the source")


class RatingMinimums(StrictModel):
    """FineVision judge minimums per axis (1-5; nanoVLM's `*_min_rating`, default 1 = off)."""

    relevance: int | None = Field(None, ge=1, le=5)
    image_correspondence: int | None = Field(None, ge=1, le=5)
    visual_dependency: int | None = Field(None, ge=1, le=5)
    formatting: int | None = Field(None, ge=1, le=5)

    def active(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in RATING_AXES if getattr(self, axis)}


class BalancingParams(StrictModel):
    """Vo et al.'s balanced top-down sampling over `concept_clusters`."""

    enabled: bool = Field(False, description="sample balanced across concepts")
    target_size: int | None = Field(
        None, ge=1, description="samples to keep from the clustered pool (None: target_fraction)"
    )
    target_fraction: float = Field(
        0.5, gt=0, le=1, description="fraction of the clustered pool kept when no target_size"
    )
    strategy: Literal["r", "c"] = Field(
        "r",
        description="within a level-1 cluster: r = random (paper CLI default), c = closest to "
        "the centroid",
    )


class ReleaseRecipe(StrictModel):
    """Name, version, sources, thresholds, sampling and output layout of one release."""

    name: str = Field("fineharbor-release", description="release and dataset name")
    version: str = Field("0.1.0", description="release version; the directory name")
    description: str = Field("", description="free text for the dataset card")
    seed: int = Field(0, description="seeds every random choice: same recipe + seed = same bytes")
    sources: list[SourceMix] = Field(
        default_factory=list,
        description="train sources to include with weight / cap; empty = every train source",
    )
    clip_score_min: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="drop pairs below this CLIP cosine (`clip_score_low`). LAION-400M: "
        f"{LAION_400M_CLIP}, LAION-5B English: {LAION_5B_CLIP}, multilingual mCLIP: "
        f"{LAION_5B_MULTI_CLIP}; all for OpenAI CLIP ViT-B/32, meaningless for another model",
    )
    clip_score_max: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="drop pairs above this CLIP cosine (`clip_score_high`; DanQing's upper "
        "bound: text that copies the image's own text, OCR-dominated pairs). DanQing publishes "
        "no value; for ViT-B/32 start around 0.45-0.50 after reading the card's distribution",
    )
    quality_min: float | None = Field(
        None,
        ge=0,
        le=3,
        description="minimum UniFilter-style quality score, 0-3 (`quality_low`); UniFilter keeps "
        "a top-k% whose k is not published",
    )
    punsafe_max: float | None = Field(
        None,
        ge=0,
        le=1,
        description=f"drop samples whose punsafe is above (`punsafe_high`); LAION-5B counts "
        f"punsafe > {LAION_PUNSAFE} as unsafe (LAION's CLIP ViT-L/14 NSFW detector)",
    )
    pwatermark_max: float | None = Field(
        None,
        ge=0,
        le=1,
        description=f"drop samples whose pwatermark is above (`watermark_high`); LAION-5B counts "
        f"pwatermark > {LAION_PWATERMARK} as watermarked (LAION's watermark_model_v1)",
    )
    aesthetic_score_min: float | None = Field(
        None,
        ge=0,
        le=10,
        description="drop samples whose aesthetic_score is below (`aesthetic_low`); "
        f"LAION-Aesthetics v2 subsets keep >= {', '.join(map(str, LAION_AESTHETICS_V2))} "
        "(LAION aesthetic predictor v2)",
    )
    pii_max: int | None = Field(
        None,
        ge=0,
        description="drop samples whose turns hold more personal-data matches than this "
        "(`pii_found`; 0 releases none; cleaned_samples.pii_found lists them, see "
        "docs/safety.md); null keeps flagged samples",
    )
    min_ratings: RatingMinimums = Field(
        RatingMinimums(),
        description="per axis: turns rated below the minimum are dropped, samples left without "
        "turns are rejected (FineVision / nanoVLM turn-level filtering)",
    )
    require_scores: bool = Field(
        False,
        description="when a threshold is set, a sample (or turn) with no score fails it; by "
        "default a missing score means not applicable (text-only samples have no CLIP score) "
        "and passes",
    )
    require_review: bool = Field(
        True,
        description="only train sources a person approved in reviews.yaml (for their current "
        "mapping) enter, minus the samples reviewers flagged (FineVision's human review); "
        "false releases every train source unreviewed",
    )
    include_image_only: bool = Field(
        True,
        description="image-only samples (no turns, `texts: []`, as FineVision's schema allows: "
        "pretraining pools, screenshot dumps) may enter; false leaves them out "
        "(`image_only_excluded`)",
    )
    balancing: BalancingParams = BalancingParams()
    shard_rows: int = Field(1000, ge=1, description="samples per Parquet shard")
    webdataset: bool = Field(
        False,
        description="also write caption pairs (samples with one image and one turn from sources "
        "mapped from a caption: a `caption` field or the laion / webdataset_caption preset) as "
        "WebDataset tar shards (.jpg/.png + .txt + .json)",
    )
    webdataset_shard_rows: int = Field(1000, ge=1, description="pairs per tar shard")
    interleaved_layout: Literal["obelics", "finevision"] = Field(
        "obelics",
        description="interleaved document sources: obelics = `images` / `texts` aligned lists "
        "with nulls + `metadata` (how OBELICS and MINT-1T are published); finevision = the "
        "document as one turn with its images, document order lost",
    )
    blur_faces: bool = Field(
        False,
        description="blur every face box of scored_samples.face_boxes in the released image "
        "bytes, as DataComp released its pool (needs stages.signals.faces: true)",
    )
    include_sample_id: bool = Field(
        True,
        description="append `sample_id` to FineVision's columns in the shards (provenance)",
    )
    max_samples: int | None = Field(
        None, ge=1, description="blocking check: the release may hold at most this many samples"
    )
    min_samples: int = Field(
        1, ge=0, description="blocking check: the release must hold at least this many samples"
    )

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError(f"{value!r} is not a usable version (letters, digits, . _ -)")
        return value

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[SourceMix]) -> list[SourceMix]:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError("a source is listed twice in the release recipe")
        return sources

    @model_validator(mode="after")
    def _bounds(self) -> ReleaseRecipe:
        if (
            self.clip_score_min is not None
            and self.clip_score_max is not None
            and self.clip_score_min >= self.clip_score_max
        ):
            raise ValueError("clip_score_min must be below clip_score_max")
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ValueError("max_samples must be at least min_samples")
        return self
