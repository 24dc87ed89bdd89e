"""The private Dagster names of `defs/dagster_internals.py`, pinned to the checked versions:
an upgrade that moves or changes one fails here first."""

import dagster as dg
from packaging.version import Version

from fineharbor.defs import dagster_internals as internals


def test_installed_dagster_is_a_checked_version():
    installed = Version(dg.__version__)
    assert (installed.major, installed.minor) in internals.CHECKED_VERSIONS, (
        f"Dagster {dg.__version__}: check the private names in defs/dagster_internals.py "
        "against it (run this module's tests), then add it to CHECKED_VERSIONS"
    )


def _assets(version: str) -> list[dg.AssetsDefinition]:
    @dg.asset(code_version="1")
    def upstream() -> int:
        return 1

    @dg.asset(code_version=version)
    def downstream(upstream: int) -> int:
        return upstream

    return [upstream, downstream]


def _graph(version: str):
    return dg.Definitions(assets=_assets(version)).get_repository_def().asset_graph


def test_stale_status_and_causes_as_the_plan_reads_them():
    instance = dg.DagsterInstance.ephemeral()
    graph = _graph("1")
    key = dg.AssetKey("downstream")
    resolver = internals.stale_status_resolver(instance, graph)
    assert isinstance(resolver, internals.CachingStaleStatusResolver)
    assert resolver.get_status(key, None) == internals.StaleStatus.MISSING
    assert dg.materialize(_assets("1"), instance=instance).success
    fresh = internals.stale_status_resolver(instance, graph)
    assert fresh.get_status(key, None) == internals.StaleStatus.FRESH

    changed = _graph("2")  # a new code version: stale, for code
    resolver = internals.stale_status_resolver(instance, changed)
    assert resolver.get_status(key, None) == internals.StaleStatus.STALE
    causes = list(resolver.get_stale_causes(key, None))
    assert [c.category for c in causes] == [internals.StaleCauseCategory.CODE]
    assert causes[0].dependency is None and causes[0].reason


def test_in_progress_run_statuses_filter_runs():
    statuses = set(internals.IN_PROGRESS_RUN_STATUSES)
    assert {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED} <= statuses
    assert dg.DagsterRunStatus.SUCCESS not in statuses
    instance = dg.DagsterInstance.ephemeral()
    filtered = dg.RunsFilter(statuses=internals.IN_PROGRESS_RUN_STATUSES)
    assert instance.get_runs_count(filtered) == 0
