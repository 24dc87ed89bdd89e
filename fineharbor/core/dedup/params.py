"""Parameters of the ``duplicate_clusters`` stage (``stages.dedup`` in ``fineharbor.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fineharbor.core.strict import StrictModel

KeepCriterion = Literal["priority", "resolution", "quality"]


class DedupParams(StrictModel):
    """Which duplicate signals run, their thresholds, the search backends and the keep policy.

    Defaults are the papers' where they give one, otherwise the value measured best on the demo's
    planted duplicates (``bench/dedup_quality.py``), with the reason in the description.
    """

    # ------------------------------------------------------------------ exact
    exact_pixels: bool = Field(True, description="same decoded pixels (sha256_pixels)")

    # ------------------------------------------------------------------ perceptual hash
    phash: bool = Field(True, description="near duplicates by 64-bit phash Hamming distance")
    phash_max_distance: int = Field(
        4,
        ge=0,
        le=32,
        description="largest Hamming distance (of 64 bits) counted as a duplicate. On the demo "
        "resize, JPEG and flip copies are within 2 bits of their original; unrelated charts are "
        "already at 2-4 bits, hence the verification below",
    )
    phash_flip: bool = Field(
        True, description="also compare each phash with the other images' mirror-image phash"
    )
    phash_rotations: bool = Field(
        True,
        description="also compare each phash with the other images' rotated and upside-down "
        "phashes (signature column phash_dihedral): finds copies turned by 90/180/270 degrees",
    )
    phash_verify_min_cosine: float | None = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="a phash pair whose two images both have a copy embedding is kept only when "
        "their cosine reaches this: a 64-bit grayscale DCT hash collides on low-detail images "
        "(charts, documents, screenshots) that a copy detector tells apart. None = no check",
    )

    # ------------------------------------------------------------------ embeddings
    copy_embedding: bool = Field(True, description="cosine of copy-detection (SSCD) embeddings")
    copy_threshold: float = Field(
        0.90,
        ge=-1.0,
        le=1.0,
        description="cosine at or above which two images are copies. FineVision: 0.90 in its "
        "code, 0.95 in its paper; SSCD: 0.75 gives ~90% precision on DISC",
    )
    clip_embedding: bool = Field(
        False,
        description="cosine of CLIP embeddings (SemDeDup-style semantic dedup). Off by default: "
        "it also removes distinct photos of the same kind of scene, not only copies",
    )
    clip_threshold: float = Field(
        0.95, ge=-1.0, le=1.0, description="SemDeDup: remove when cosine > 1 - eps"
    )
    exact_search_limit: int = Field(
        10_000,
        ge=2,
        description="vectors searched exactly (faiss IndexFlatIP range search, quadratic) up to "
        "this count; above it a forest of hierarchical k-means trees, O(n log n), its recall "
        "measured and reported. 32k x 128-d on one core: exact 2.7 s, forest 0.65 s at recall "
        "1.000 (bench/dedup.py)",
    )
    binary_exact_limit: int = Field(
        10_000,
        ge=2,
        description="perceptual hashes searched with faiss IndexBinaryFlat up to this count; "
        "above it IndexBinaryMultiHash, exact too (multi-index hashing, pieces chosen for the "
        "corpus size; docs/dedup.md): the duplicate build of 1M images took 224 s, not 1,322 s",
    )
    forest_trees: int = Field(
        6,
        ge=1,
        le=64,
        description="k-means trees above exact_search_limit; a pair is found when it shares a "
        "leaf in any. 4k-128k clustered vectors at cosine >= 0.9: 1 tree finds 79-94% of the "
        "pairs, 4 trees 99.8%, 6 all of them; time grows linearly with the count",
    )
    forest_leaf_size: int = Field(
        256, ge=16, le=4096, description="largest leaf; pairs are checked exactly within leaves"
    )

    max_candidates_per_item: int | None = Field(
        32,
        ge=1,
        description="near-duplicate candidates (phash, copy embedding, each apart) kept per "
        "image before pixel verification, the most similar first: a pair stays when it is among "
        "the top of either image. In a dense neighbourhood (templated charts, documents, app "
        "screens) a descriptor proposes a clique; this bounds verification to n x cap pairs. "
        "Recorded in the stage metadata when it cuts. None = no cap",
    )

    near_duplicate_exempt_sources: tuple[str, ...] = Field(
        (),
        description="sources whose images are not near-duplicate-matched (phash, embeddings) "
        "among themselves. For GUI trajectories: app screens repeat with only a title, a clock "
        "or a typed field changed (differences copy detectors are trained to ignore), and every "
        "step is a distinct sample. Exact pixel duplicates, and matches against sources outside "
        "this list, still count",
    )

    # ------------------------------------------------------------------ pixel verification
    verify_pixels: bool = Field(
        True,
        description="when the stage can load images, check every phash / copy-embedding "
        "candidate pair by aligning the two images (rotation, mirror, crop scale, offset) and "
        "comparing luminance: global descriptors also match look-alikes (charts with one "
        "palette, app screens, another photo of one object), the alignment tells them from "
        "copies (resized, grayscale, re-encoded, rotated, flipped, cropped)",
    )
    verify_min_ncc: float = Field(
        0.90, ge=-1.0, le=1.0, description="least normalised cross-correlation at the best fit"
    )
    verify_max_tile_residual: float = Field(
        16.0,
        ge=0.0,
        description="largest mean absolute difference (grey levels) of any tile of a 6x6 grid "
        "after the fit (RGB with chroma compared at JPEG's half resolution; luminance when "
        "either image is grey). Pipeline benchmark (20k): planted copies reach at most 14.7, "
        "distinct photos at least 37.6; demo: recall and precision 1.000 "
        "(bench/dedup_quality.py)",
    )
    verify_max_detail_residual: float | None = Field(
        35.0,
        ge=0.0,
        description="a pair the full-frame fit confirmed is compared again at the smaller "
        "image's resolution and refuted when its largest mean signed residual of a 2x2 window "
        "(after a gain/offset fit, grey levels) exceeds this and verify_min_detail_contrast "
        "times the pair's residual level: charts, documents and screens from one template "
        "differ in a few glyphs that a 64 px thumbnail averages away (docs/dedup.md). "
        "None = no detail check",
    )
    verify_min_detail_contrast: float = Field(
        4.6,
        gt=0.0,
        description="how far the worst 2x2 window must stand out of the pair's residual level "
        "(99th percentile window + 2) to refute: a copy of a textured photo is noisy "
        "everywhere (demo resize copies up to 4.2), a changed glyph stands out (templated "
        "charts at least 5.1, also against another chart's 0.5x copy)",
    )
    verify_detail_size: int = Field(
        512,
        ge=64,
        le=4096,
        description="longest side of the detail views (larger images are area-averaged to it)",
    )
    verify_detail_budget_mb: int = Field(
        256,
        ge=1,
        le=1_048_576,
        description="memory (MiB) for the detail views one streaming pass of the detail check "
        "holds, each counted at verify_detail_size squared bytes (256 MiB: 1,024 views at 512): "
        "the check streams cleaned_samples once when its images fit, else about images / "
        "budget times",
    )
    verify_size: int = Field(64, ge=24, le=256, description="thumbnail side for the fine fit")
    verify_batch_size: int = Field(
        256, ge=1, le=65_536, description="pairs verified together on stacked thumbnails"
    )
    verify_workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="worker processes verifying batches (used when there is more than one "
        "batch). None = the CPUs this process may use, at most 8; 1 = in process",
    )
    verify_max_crop_area: float = Field(
        0.36, ge=0.0, lt=1.0, description="largest share of the area a crop may remove"
    )

    # ------------------------------------------------------------------ text
    url_caption: bool = Field(
        True, description="LAION-400M: same normalised URL + caption (rows with an http(s) URL)"
    )
    text_exact: bool = Field(True, description="text-only samples: same normalised text")
    text_minhash: bool = Field(True, description="text-only samples: MinHash LSH near duplicates")
    minhash_threshold: float = Field(0.8, gt=0.0, le=1.0, description="word-shingle Jaccard")
    minhash_num_perm: int = Field(128, ge=16, le=1024)
    shingle_size: int = Field(5, ge=1, le=32, description="words per shingle")
    minhash_min_words: int = Field(
        50, ge=1, description="shorter texts take part in the exact text check only"
    )

    # ------------------------------------------------------------------ keep policy
    keep_order: tuple[KeepCriterion, ...] = Field(
        ("priority", "resolution", "quality"),
        description="criteria, in order, choosing the member kept: source priority (higher "
        "wins), resolution (more pixels of the largest image wins), quality score (higher wins, "
        "missing loses); remaining ties go to the smallest sample_id so reruns keep the same",
    )

    @field_validator("keep_order")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"keep_order repeats a criterion: {list(value)}")
        return value
