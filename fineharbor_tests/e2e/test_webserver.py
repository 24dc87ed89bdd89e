"""End to end through real services: a PostgreSQL-backed Dagster instance, dagster-webserver and
dagster-daemon as subprocesses, the GraphQL API the UI uses, and headless Chromium.

1. Every configured source becomes a `source` partition (GraphQL `addDynamicPartition`), and a
   partition backfill of the per-source job's assets over all of them is launched the way the UI
   launches one. The daemon is SIGKILLed while the backfill runs and restarted; the backfill
   finishes with exactly one run and one materialization per partition, every blocking check
   passed, and complete, conserved, duplicate-free outputs on disk.
2. The global lineage page, rendered by Chromium, shows every asset of the Definitions (the
   screenshot and the DOM are saved under test-artifacts/e2e/).

Expected assets come from `fineharbor.definitions.defs`, so new stages are covered as they land.
"""

from __future__ import annotations

import math
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from fineharbor.core.config import OrchestrationParams
from fineharbor.core.pipeline import CLEANED, RAW, UNIFIED
from fineharbor.core.storage import Storage
from fineharbor.definitions import defs
from fineharbor_tests.e2e.services import DagsterStack, chromium, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BACKFILL_JOB = "per_source_job"
BACKFILL_TIMEOUT_S = 600  # about 2 min on a shared 2-core machine; 6.5 min seen under load 13
# Steps run in the run worker's process: one process per run instead of one per step. The
# executor is not under test here, and process start-up dominates such small partitions.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
# Stages holding one row per sample, in chain order: rows in = kept + rejected between them.
SAMPLE_CHAIN = [RAW, UNIFIED, CLEANED]

ADD_PARTITION = """
mutation($location: String!, $key: String!) {
  addDynamicPartition(
    repositorySelector: {repositoryLocationName: $location, repositoryName: "__repository__"}
    partitionsDefName: "source", partitionKey: $key
  ) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""

ASSET_NODES = """
{ assetNodes { assetKey { path } groupName jobNames partitionKeys } }"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { message stack }
  }
}"""

BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status error { message } }
  }
}"""

BACKFILL_RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""

RUN_FAILURES = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { eventConnection(limit: 500) { events {
      __typename
      ... on ExecutionStepFailureEvent { stepKey error { message } }
      ... on RunFailureEvent { message }
      ... on AssetCheckEvaluationEvent { evaluation { checkName success } }
    } } }
  }
}"""


# --------------------------------------------------------------------------- helpers


def job_assets(job: str) -> list[str]:
    keys = defs.resolve_job_def(job).asset_layer.executable_asset_keys
    return sorted(key.to_user_string() for key in keys)


def asset_nodes(stack: DagsterStack) -> dict[str, dict]:
    nodes = stack.graphql(ASSET_NODES)["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): n for n in nodes}


def launch_backfill(stack: DagsterStack, assets: list[str], partitions: list[str]) -> str:
    params = {
        "assetSelection": [{"path": a.split("/")} for a in assets],
        "partitionNames": partitions,
        "fromFailure": False,
        "title": "e2e: every source",
        "runConfigData": IN_PROCESS,
    }
    result = stack.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def backfill_status(stack: DagsterStack, backfill_id: str) -> str:
    backfill = stack.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
    assert backfill["__typename"] == "PartitionBackfill", backfill
    return backfill["status"]


def backfill_runs(stack: DagsterStack, backfill_id: str) -> list[dict]:
    runs = stack.graphql(BACKFILL_RUNS, id=backfill_id)["runsOrError"]["results"]
    for run in runs:
        tags = {t["key"]: t["value"] for t in run.pop("tags")}
        single = tags.get("dagster/partition")
        start = tags.get("dagster/asset_partition_range_start", single)
        end = tags.get("dagster/asset_partition_range_end", single)
        run["range"] = (start, end)
        run["partition"] = single or f"{start}..{end}"
    return runs


def partitions_of(run: dict, order: list[str]) -> list[str]:
    """The partitions a run materialized: its range in the partitions definition's order."""
    start, end = run["range"]
    return order[order.index(start) : order.index(end) + 1]


def failure_report(stack: DagsterStack, runs: list[dict]) -> str:
    """Why the backfill's unsuccessful runs failed: step errors, failed checks, run failures."""
    lines = []
    for run in runs:
        if run["status"] == "SUCCESS":
            continue
        lines.append(f"run {run['runId']} ({run['partition']}): {run['status']}")
        data = stack.graphql(RUN_FAILURES, runId=run["runId"])["runOrError"]
        for event in data.get("eventConnection", {}).get("events", []):
            kind = event["__typename"]
            if kind == "ExecutionStepFailureEvent":
                lines.append(f"  step {event['stepKey']}: {event['error']['message'][:1500]}")
            elif kind == "AssetCheckEvaluationEvent" and not event["evaluation"]["success"]:
                lines.append(f"  check failed: {event['evaluation']['checkName']}")
            elif kind == "RunFailureEvent":
                lines.append(f"  {event['message']}")
    return "\n".join(lines) + "\n" + stack.diagnostics()


def wait_for_backfill(stack: DagsterStack, backfill_id: str) -> str:
    def finished() -> str | None:
        status = backfill_status(stack, backfill_id)
        return None if status in ("REQUESTED", "CANCELING", "FAILING") else status

    def diagnostics() -> str:
        runs = [(r["partition"], r["status"]) for r in backfill_runs(stack, backfill_id)]
        return f"runs: {runs}\n{stack.diagnostics()}"

    return wait_for(
        finished,
        timeout=BACKFILL_TIMEOUT_S,
        what=f"backfill {backfill_id} to finish",
        interval=1,
        diagnostics=diagnostics,
    )


def sample_ids(storage: Storage, asset: str, partition: str) -> list[str]:
    with duckdb.connect() as connection:
        rows = connection.execute(
            "select sample_id from read_parquet(?)", [storage.files(asset, partition)]
        ).fetchall()
    return [r[0] for r in rows]


def assert_published_once(storage: Storage, asset: str, partition: str) -> None:
    """One published output per partition: only part files, no staging or retired leftovers."""
    for kind in ("data", "rejects"):
        directory = Path(storage.dir(asset, partition, kind))
        assert directory.is_dir(), f"{directory} is missing"
        entries = sorted(p.name for p in directory.iterdir())
        assert entries and all(e.startswith("part-") and e.endswith(".parquet") for e in entries), (
            f"{directory} holds more than published part files: {entries}"
        )
        leftovers = [p.name for p in directory.parent.glob(f"{directory.name}.*")]
        assert not leftovers, f"retired outputs left next to {directory}: {leftovers}"


def assert_conserved(storage: Storage, partition: str, records: int) -> None:
    """Every demo record is a raw sample or a raw reject; each stage of the sample chain keeps
    or rejects every row of the previous one, without duplicating a sample_id."""
    rows_in = records
    for asset in SAMPLE_CHAIN:
        kept = storage.count_rows(asset, partition)
        rejected = storage.count_rows(asset, partition, kind="rejects")
        assert kept + rejected == rows_in, (asset, partition, rows_in, kept, rejected)
        duplicated = [i for i, n in Counter(sample_ids(storage, asset, partition)).items() if n > 1]
        assert not duplicated, f"{asset}/{partition}: duplicated sample_ids {duplicated[:5]}"
        rows_in = kept


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def partitions(stack, demo) -> list[str]:
    """Every configured source added as a `source` partition through GraphQL."""
    for name in demo.sources:
        result = stack.graphql(ADD_PARTITION, location=stack.location, key=name)
        kind = result["addDynamicPartition"]["__typename"]
        assert kind in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"), result
    nodes = asset_nodes(stack)
    for asset in job_assets(BACKFILL_JOB):
        assert sorted(nodes[asset]["partitionKeys"]) == sorted(demo.sources), asset
    return demo.sources


def test_backfill_of_every_source_partition_survives_a_killed_daemon(stack, demo, partitions):
    assets = job_assets(BACKFILL_JOB)
    nodes = asset_nodes(stack)
    assert all(BACKFILL_JOB in nodes[a]["jobNames"] for a in assets), "server and defs disagree"
    order = nodes[assets[0]]["partitionKeys"]
    settings = yaml.safe_load(demo.config.read_text()).get("orchestration") or {}
    per_run = OrchestrationParams(**settings).partitions_per_run
    expected_runs = math.ceil(len(partitions) / per_run)
    started = time.monotonic()
    backfill_id = launch_backfill(stack, assets, partitions)

    # Kill the daemon mid-way: a run has started, and not every partition is done.
    def a_run_started() -> bool:
        return any(r["status"] != "QUEUED" for r in backfill_runs(stack, backfill_id))

    wait_for(a_run_started, timeout=180, what="a run of the backfill to start",
             diagnostics=stack.diagnostics)  # fmt: skip
    stack.daemon.kill_leader()
    at_kill = backfill_runs(stack, backfill_id)
    assert sum(r["status"] == "SUCCESS" for r in at_kill) < expected_runs, "killed too late"
    assert backfill_status(stack, backfill_id) == "REQUESTED"
    time.sleep(2)
    restarted = time.time()
    stack.daemon.start()
    stack.wait_for_daemon(timeout=120, since=restarted)

    status = wait_for_backfill(stack, backfill_id)
    runs = backfill_runs(stack, backfill_id)
    print(f"\nbackfill of {len(assets)} assets x {len(partitions)} partitions: "
          f"{time.monotonic() - started:.0f}s; at kill: "
          f"{sorted((r['partition'], r['status']) for r in at_kill)}")  # fmt: skip
    assert status == "COMPLETED_SUCCESS", failure_report(stack, runs)
    # a few partitions per run (orchestration.partitions_per_run), each partition in exactly
    # one run: the restarted daemon submitted nothing twice
    assert len(runs) == expected_runs, runs
    covered = [p for run in runs for p in partitions_of(run, order)]
    assert sorted(covered) == sorted(partitions), runs
    assert all(r["status"] == "SUCCESS" for r in runs), failure_report(stack, runs)

    # What the Postgres-backed instance recorded: one materialization per (asset, partition),
    # from this backfill, whose row count is what is on disk; every blocking check passed.
    run_ids = {r["runId"] for r in runs}
    storage = Storage(str(demo.home))
    instance = stack.instance()
    for asset in assets:
        key = dg.AssetKey.from_user_string(asset)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=1000
        ).records
        per_partition = Counter(r.partition_key for r in records)
        assert per_partition == dict.fromkeys(partitions, 1), (asset, per_partition)
        for record in records:
            assert record.run_id in run_ids, (asset, record.partition_key)
            metadata = record.asset_materialization.metadata
            on_disk = storage.count_rows(asset, record.partition_key)
            assert metadata["dagster/row_count"].value == on_disk, (asset, record.partition_key)
    # every blocking check of every asset evaluated once per run, and passed
    checks = sorted(
        c.to_user_string()
        for c in defs.resolve_asset_graph().asset_check_keys
        if c.asset_key.to_user_string() in assets
    )
    assert len(checks) >= 3 * len(assets), checks
    for run in runs:
        evaluations = [
            event.dagster_event.event_specific_data
            for event in instance.all_logs(
                run["runId"], of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            )
        ]
        assert sorted(e.asset_check_key.to_user_string() for e in evaluations) == checks, run
        failed = [e.asset_check_key.to_user_string() for e in evaluations if not e.passed]
        assert not failed, (run["partition"], failed)
    for partition in partitions:
        for asset in assets:
            assert_published_once(storage, asset, partition)
        assert_conserved(storage, partition, demo.summary.records[partition])
    staging = Path(storage.path("_staging"))
    assert not staging.exists() or not any(staging.iterdir()), "staging directories left behind"


def test_asset_graph_page_shows_every_asset(stack, chromium_binary, artifacts, tmp_path):
    graph = defs.resolve_asset_graph()
    names = sorted(key.path[-1] for key in graph.materializable_asset_keys)
    groups = sorted({graph.get(key).group_name for key in graph.materializable_asset_keys})
    # The global lineage opens with every group collapsed; ?expanded= opens them (the UI keeps
    # that state in the URL; group ids are "global@global:<group>", or per code location).
    expanded = [f"global@global:{g}" for g in groups]
    expanded += [f"__repository__@{stack.location}:{g}" for g in groups]
    url = f"{stack.base_url}/asset-groups?" + urllib.parse.urlencode(
        {"expanded": ",".join(expanded)}
    )

    # The graph draws no node outside the viewport: a window large enough for every stage.
    window = max(1600, 270 * len(names))
    screenshot = artifacts / "asset-graph.png"
    screenshot.unlink(missing_ok=True)
    chromium(
        chromium_binary, url, tmp_path / "profile-png", f"--screenshot={screenshot}", window=window
    )
    print(f"\nscreenshot: {screenshot}")
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, screenshot

    dom = chromium(chromium_binary, url, tmp_path / "profile-dom", "--dump-dom", window=window)
    (artifacts / "asset-graph.html").write_text(dom)
    assert "Global asset lineage" in dom, "the lineage page did not render"
    absent = [name for name in names if name not in dom]
    assert not absent, f"asset graph page lacks {absent}; DOM saved to {artifacts}"
