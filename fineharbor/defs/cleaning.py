"""Cleaning: every sample's images decoded and checked, its texts filtered (`cleaned_samples`)."""

import dagster as dg

from fineharbor.core.pipeline import CLEANED, resolve, stage
from fineharbor.defs.factory import StageRun, per_source_stage
from fineharbor.defs.reporting import cleaned_distributions
from fineharbor.defs.resources import FineharborProject, WorkerPoolsResource


def _clean_in_warm_pools(context: dg.AssetExecutionContext, project: FineharborProject) -> StageRun:
    # the pools stay warm across the run's partitions
    pools: WorkerPoolsResource = context.resources.pools
    build = resolve(stage(CLEANED).build)
    return lambda config, partition, storage, progress: build(
        config, partition, storage, progress, pools=pools.pools
    )


cleaned_samples = per_source_stage(
    CLEANED,
    setup=_clean_in_warm_pools,
    resources={"pools"},
    plots=cleaned_distributions,
    review_page=True,
)
