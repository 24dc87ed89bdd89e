"""Parameters of the ``concept_clusters`` stage (``stages.concepts`` in ``fineharbor.yaml``).

Vo et al. 2024 (``facebookresearch/ssl-data-curation``) cluster web images in four levels with
``configs/4levels_web_based_images.yaml``; written in this file's terms::

    stages:
      concepts:
        n_iters: 50
        resample_strategy: closest
        levels:
          - {n_clusters: 10000000, n_resamples: 1, sample_size: 1}   # paper: 100k x 100 splits
          - {n_clusters: 500000, n_resamples: 10, sample_size: 10}
          - {n_clusters: 50000, n_resamples: 10, sample_size: 5}
          - {n_clusters: 10000, n_resamples: 10, sample_size: 3}

The defaults here are a small two-level configuration sized for the demo (a few hundred samples).
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, field_validator

from fineharbor.core.strict import StrictModel


class ConceptLevel(StrictModel):
    """One level of the hierarchy: level 1 clusters the points, level l the level l-1 centroids."""

    n_clusters: int = Field(
        ge=1,
        description="clusters at this level (capped at the number of items it clusters); paper: "
        "10M (100k x 100 splits), 500k, 50k, 10k",
    )
    n_resamples: int = Field(
        0,
        ge=0,
        description="resampling steps: rerun k-means on `sample_size` items per cluster, then "
        "reassign all items; paper: 1, 10, 10, 10",
    )
    sample_size: int = Field(
        1,
        ge=1,
        description="items per cluster taken at each resampling step (1 = no resampling); about "
        "half the average cluster size; paper: 1, 10, 5, 3",
    )


class ConceptParams(StrictModel):
    """Hierarchical k-means over image embeddings (Vo et al. 2024)."""

    embedding: Literal["auto", "copy_embedding", "clip_embedding", "phash"] = Field(
        "auto",
        description="image_signatures column clustered: auto = copy_embedding if present, else "
        "clip_embedding, else phash (the 64 phash bits as a +-1 vector: a crude stand-in so the "
        "hash-only demo can balance; use a real embedding, the paper used DINOv2)",
    )
    levels: list[ConceptLevel] = Field(
        default_factory=lambda: [
            ConceptLevel(n_clusters=24, n_resamples=2, sample_size=4),
            ConceptLevel(n_clusters=6, n_resamples=2, sample_size=2),
        ],
        min_length=1,
        description="levels bottom-up; the paper's 4-level web-image config is in the module doc",
    )
    n_iters: int = Field(50, ge=1, description="k-means iterations per run (paper: 50)")
    resample_strategy: Literal["closest", "random"] = Field(
        "closest",
        description="which items each resampling step takes per cluster (paper config: closest)",
    )
    init_points_per_cluster: int = Field(
        64,
        ge=1,
        description="k-means++ seeding runs on at most this many random items per cluster "
        "(seeding is sequential in k; a sample keeps it fast at 1M points)",
    )
    seed: int = Field(0, description="seeds k-means++, resampling and the random choices")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = faiss GPU when faiss sees one, else CPU"
    )

    @field_validator("levels")
    @classmethod
    def _shrinking(cls, levels: list[ConceptLevel]) -> list[ConceptLevel]:
        for lower, upper in itertools.pairwise(levels):
            if upper.n_clusters > lower.n_clusters:
                raise ValueError(
                    "each level must have at most as many clusters as the level below "
                    f"({upper.n_clusters} > {lower.n_clusters})"
                )
        return levels
