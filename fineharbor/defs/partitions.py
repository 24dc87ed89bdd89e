import warnings

import dagster as dg

from fineharbor.core.config import ConfigError, OrchestrationParams, load_config

# One partition per configured source (train and benchmark); added by the source sensor.
source_partitions = dg.DynamicPartitionsDefinition(name="source")


def _partitions_per_run() -> int:
    """`orchestration.partitions_per_run` of the project file; the default when the file is
    missing or invalid (the source sensor and every run report that error)."""
    try:
        return load_config().orchestration.partitions_per_run
    except ConfigError:
        return OrchestrationParams().partitions_per_run


# `backfill_policy` on @asset is "beta" in Dagster 1.13 and warns once per asset at every load of
# the definitions; the policy has been stable since 1.5, so that one message is silenced.
warnings.filterwarnings(
    "ignore", message="Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning
)

# Backfills of per-source stages run a few partitions per run (Dagster groups contiguous
# partition keys into ranges); a sensor or single-partition launch still runs one.
per_source_backfill_policy = dg.BackfillPolicy.multi_run(_partitions_per_run())
