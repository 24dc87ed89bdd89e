"""Cross-source deduplication: exact and near-duplicate signals, union-find clusters, keep
policy, and FineVision's diversity score (the ``duplicate_clusters`` stage core)."""

from fineharbor.core.dedup.clusters import DUPLICATE_SCHEMA, SIGNALS, find_duplicates
from fineharbor.core.dedup.diversity import CovarianceAccumulator, Diversity, diversity_score
from fineharbor.core.dedup.params import DedupParams
from fineharbor.core.dedup.samples import SAMPLE_SCHEMA, compact_samples
from fineharbor.core.dedup.search import (
    RecallReport,
    brute_force_cosine_pairs,
    build_approximate_index,
    cosine_pairs,
    exact_cosine_pairs,
    hamming_pairs,
    measure_recall,
)
from fineharbor.core.dedup.text import minhash_pairs, normalise_url, text_key, url_caption_key
from fineharbor.core.dedup.union_find import UnionFind, cluster_id
from fineharbor.core.dedup.verify import (
    PairVerifier,
    Thumbnail,
    align,
    batches_thumbnail_loader,
    thumbnails_from_batches,
)

__all__ = [
    "DUPLICATE_SCHEMA",
    "SAMPLE_SCHEMA",
    "SIGNALS",
    "CovarianceAccumulator",
    "DedupParams",
    "Diversity",
    "PairVerifier",
    "RecallReport",
    "Thumbnail",
    "UnionFind",
    "align",
    "batches_thumbnail_loader",
    "brute_force_cosine_pairs",
    "build_approximate_index",
    "cluster_id",
    "compact_samples",
    "cosine_pairs",
    "diversity_score",
    "exact_cosine_pairs",
    "find_duplicates",
    "hamming_pairs",
    "measure_recall",
    "minhash_pairs",
    "normalise_url",
    "text_key",
    "thumbnails_from_batches",
    "url_caption_key",
]
