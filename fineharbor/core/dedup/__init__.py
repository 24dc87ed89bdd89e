"""Cross-source deduplication: exact and near-duplicate signals, union-find clusters, keep
policy, and FineVision's diversity score (the ``duplicate_clusters`` stage core).

Names resolve on first use: the project config imports ``DedupParams`` and must not pay for
faiss, datasketch and scipy at load time.
"""

from __future__ import annotations

from fineharbor.core.lazy import lazy_getattr

_LAZY = {
    "CovarianceAccumulator": "diversity",
    "DUPLICATE_SCHEMA": "clusters",
    "DedupParams": "params",
    "Diversity": "diversity",
    "PairVerifier": "verify",
    "RecallReport": "search",
    "SAMPLE_SCHEMA": "samples",
    "SIGNALS": "clusters",
    "Thumbnail": "verify",
    "UnionFind": "union_find",
    "align": "verify",
    "batches_thumbnail_loader": "verify",
    "brute_force_cosine_pairs": "search",
    "cap_per_item": "clusters",
    "cluster_id": "union_find",
    "compact_samples": "samples",
    "cosine_pairs": "search",
    "diversity_score": "diversity",
    "exact_cosine_pairs": "search",
    "ForestParams": "search",
    "forest_cosine_pairs": "search",
    "find_duplicates": "clusters",
    "hamming_pairs": "search",
    "measure_recall": "search",
    "minhash_pairs": "text",
    "normalise_url": "text",
    "text_key": "text",
    "thumbnails_from_batches": "verify",
    "url_caption_key": "text",
    "verify_stacks": "verify",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "DUPLICATE_SCHEMA",
    "SAMPLE_SCHEMA",
    "SIGNALS",
    "CovarianceAccumulator",
    "DedupParams",
    "Diversity",
    "ForestParams",
    "PairVerifier",
    "RecallReport",
    "Thumbnail",
    "UnionFind",
    "align",
    "batches_thumbnail_loader",
    "brute_force_cosine_pairs",
    "cap_per_item",
    "cluster_id",
    "compact_samples",
    "cosine_pairs",
    "diversity_score",
    "exact_cosine_pairs",
    "find_duplicates",
    "forest_cosine_pairs",
    "hamming_pairs",
    "measure_recall",
    "minhash_pairs",
    "normalise_url",
    "text_key",
    "thumbnails_from_batches",
    "url_caption_key",
    "verify_stacks",
]
