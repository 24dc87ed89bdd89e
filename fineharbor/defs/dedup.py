"""Deduplication: image signatures per source, duplicate clusters over every train source, and
each source minus its non-kept duplicates."""

import dagster as dg

from fineharbor.core.dedup.build import build_duplicate_clusters
from fineharbor.core.pipeline import DEDUPLICATED, DUPLICATES, SIGNATURES
from fineharbor.core.signatures.build import build_image_signatures
from fineharbor.defs.factory import StageRun, global_result, global_stage, per_source_stage
from fineharbor.defs.reporting import markdown_table
from fineharbor.defs.resources import FineharborProject


def _sign_with_embedders(context: dg.AssetExecutionContext, project: FineharborProject) -> StageRun:
    embedders = context.resources.embedder.embedders(project.config.stages.signatures)

    def run(config, partition, storage, progress):
        report = build_image_signatures(config, partition, storage, progress, embedders=embedders)
        report.extra["images_per_second"] = round(report.rows_per_second, 1)
        # an absent model leaves its column null (logged with how to get it): say which ran
        report.extra["embeddings"] = ", ".join(e.name for e in embedders) or "none (hashes only)"
        return report

    return run


# The embedders load once per run; signatures are of the images as cleaned, without the
# reviewers' per-source overrides (none of them is a signature parameter).
image_signatures = per_source_stage(
    SIGNATURES, setup=_sign_with_embedders, resources={"embedder"}, reviewed=False
)


@global_stage(DUPLICATES)
def duplicate_clusters(project: FineharborProject) -> dg.MaterializeResult:
    clusters, stats = build_duplicate_clusters(project.config, project.storage)
    rows = clusters.select(["source", "cluster_id", "cluster_size", "is_kept"]).to_pylist()
    source_of = {r["cluster_id"]: r["source"] for r in rows if r["is_kept"]}
    pairs: dict[tuple[str, str], int] = {}
    for row in rows:
        if not row["is_kept"]:
            pair = (row["source"], source_of[row["cluster_id"]])
            pairs[pair] = pairs.get(pair, 0) + 1
    sizes: dict[int, int] = {}
    for row in rows:
        if row["is_kept"]:
            sizes[row["cluster_size"]] = sizes.get(row["cluster_size"], 0) + 1
    summary = (
        f"{len(source_of)} clusters, {clusters.num_rows - len(source_of)} duplicates dropped\n\n"
        "### Duplicates per source pair (dropped from, kept in)\n"
        + markdown_table(
            ["dropped from", "kept in", "samples"], [(*k, v) for k, v in sorted(pairs.items())]
        )
        + "\n\n### Cluster sizes\n"
        + markdown_table(["size", "clusters"], sorted(sizes.items()))
    )
    return global_result(clusters, stats, summary)


deduplicated_samples = per_source_stage(DEDUPLICATED)
