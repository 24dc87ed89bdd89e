"""Parameters of decontamination (``stages.decontam`` in ``fineharbor.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fineharbor.core.strict import StrictModel


class DecontamParams(StrictModel):
    """FineVision compares SSCD embeddings of train images with 66 benchmarks' test images."""

    embedding: Literal["copy_embedding", "clip_embedding"] | None = Field(
        "copy_embedding",
        description="signature column compared by cosine; None = perceptual hash only",
    )
    image_threshold: float = Field(
        0.95,
        ge=-1.0,
        le=1.0,
        description="FineVision's blog: cosine >= 0.95 is a match (its code defaults to 0.90)",
    )
    use_phash: bool = Field(True, description="also match by perceptual hash (and its mirror)")
    phash_rotations: bool = Field(
        True,
        description="also match the train image's rotated and upside-down phashes "
        "(``phash_dihedral``): a benchmark image turned by 90/180/270 degrees is still a copy",
    )
    phash_max_distance: int = Field(
        4,
        ge=0,
        le=32,
        description="Hamming distance of 64-bit phashes counted as a match. FineVision matches "
        "by SSCD only; the hash is a second signal, so it is kept tight: on the scale-1.0 demo, "
        "distance 6 flagged 4 of 1,005 clean samples (similar synthetic charts), distance 4 none, "
        "with every planted copy still caught",
    )
    use_text: bool = Field(True, description="match question/answer text by word n-grams")
    ngram: int = Field(13, ge=3, le=64, description="13-grams, as text decontamination tools use")
    text_fields: tuple[Literal["user", "assistant"], ...] = Field(
        ("user",), description="turn fields of benchmark samples whose n-grams are indexed"
    )
    precomputed_embeddings: list[str] = Field(
        default_factory=list,
        description="Parquet files of benchmark embeddings (e.g. FineVision's published "
        "lmms-eval embeddings), with schema metadata `embedder` naming the model",
    )
    max_contamination_rate: float = Field(
        0.05, ge=0.0, le=1.0, description="the report's check fails above this sample rate"
    )
