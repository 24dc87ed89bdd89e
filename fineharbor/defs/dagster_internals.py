"""Every private Dagster API fineharbor uses, in one place.

Dagster's public API has no way to ask whether an asset partition is stale and why (what the UI
shows); the stale-partition schedule (`automation.py`), `fineharbor materialize`'s plan
(`plan.py`) and `fineharbor status` need exactly that. These names come from ``dagster._core``
and may change in any minor release: `fineharbor_tests/defs/test_dagster_internals.py` pins the
Dagster versions they were checked against (:data:`CHECKED_VERSIONS`) and exercises each one,
so an upgrade fails that one test, loudly, rather than the schedule at 3 a.m.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import (
    CachingStaleStatusResolver,
    StaleCauseCategory,
    StaleStatus,
)
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES
from dagster._time import get_current_datetime

# Dagster releases (major, minor) these internals were checked against.
CHECKED_VERSIONS = ((1, 13),)

__all__ = [
    "CHECKED_VERSIONS",
    "IN_PROGRESS_RUN_STATUSES",
    "CachingStaleStatusResolver",
    "StaleCauseCategory",
    "StaleStatus",
    "stale_status_resolver",
]


def stale_status_resolver(instance: dg.DagsterInstance, graph) -> CachingStaleStatusResolver:
    """What the UI uses to show an asset partition stale, fresh or missing, as of now."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance, asset_graph=graph, loading_context=view)
