"""The process-pool engine on a stage that is not cleaning: a row that kills its worker or
overruns its time limit is rejected with a reason, every other row comes out as in process."""

from __future__ import annotations

import functools
import os
import signal
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fineharbor.core.distributed.engine import (
    BatchWork,
    Failure,
    Resources,
    map_batches,
    map_partition,
)
from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.distributed.pool import FLUSH_ROWS, ProcessPool, WorkerPools, watch
from fineharbor.core.pipeline import CLEANED, UNIFIED
from fineharbor.core.schema import REJECT_SCHEMA, make_sample_id
from fineharbor.core.storage import Storage

CRASH, HANG, HANG_ITEM, FAIL = 1001, 1003, 1005, 1007  # odd: rejected were they processed
SCHEMA = pa.schema([("sample_id", pa.string()), ("source", pa.string()),
                    ("origin_key", pa.string()), ("n", pa.int64())])  # fmt: skip


def _rows(numbers: list[int]) -> pa.RecordBatch:
    keys = [f"k{n}" for n in numbers]
    return pa.RecordBatch.from_pydict(
        {"sample_id": [make_sample_id("s", k) for k in keys], "source": ["s"] * len(keys),
         "origin_key": keys, "n": numbers}, schema=SCHEMA)  # fmt: skip


def _squares(batches, report: bool = False, sizes: str | None = None):
    """Keeps even numbers (squared), rejects odd ones; misbehaves on the marked numbers.
    ``report``: calls ``watch().row_start`` for each row (``Resources.reports_rows``);
    ``sizes``: a file each batch's row count is appended to."""
    for batch in batches:
        if sizes:
            with open(sizes, "a") as log:
                log.write(f"{batch.num_rows}\n")
        table = pa.Table.from_batches([batch])
        for i, n in enumerate(table.column("n").to_pylist()):
            if report:
                watch().row_start(i)
            if n == CRASH:
                os.kill(os.getpid(), signal.SIGSEGV)
            if n == HANG:
                time.sleep(60)
            if n == HANG_ITEM:
                watch().item_start(0)
                watch().item_end()
                watch().item_start(1)
                time.sleep(60)
            if n == FAIL:
                raise ValueError("a bug, not a bad row")
        even = pc.equal(pc.bit_wise_and(table.column("n"), 1), 0)
        kept = table.filter(even).select(["sample_id", "n"])
        kept = kept.set_column(1, "n", pc.multiply(kept.column("n"), kept.column("n")))
        odd = table.filter(pc.invert(even))
        rejected = pa.table(
            {"sample_id": odd.column("sample_id"), "source": odd.column("source"),
             "origin_key": odd.column("origin_key"), "reason": ["odd"] * odd.num_rows,
             "detail": [f"n={n}" for n in odd.column("n").to_pylist()]}, schema=REJECT_SCHEMA)  # fmt: skip
        yield kept, rejected


def _setup():
    return _squares


def _setup_reporting(sizes: str):
    return functools.partial(_squares, report=True, sizes=sizes)


def _crash_on_setup():
    os.kill(os.getpid(), signal.SIGKILL)


def _blame_items(failure: Failure, row: dict) -> tuple[str, str]:
    return "custom", f"{failure.kind} row {row['n']} item {failure.item} limit {failure.limit_s}"


def _work(**resources) -> BatchWork:
    return BatchWork("numbers", _setup, resources=Resources(processes=2, **resources))


def _outcomes(pairs) -> tuple[list[dict], list[dict]]:
    pairs = list(pairs)
    return (
        [r for kept, _ in pairs for r in kept.to_pylist()],
        [r for _, rejected in pairs for r in rejected.to_pylist()],
    )


def test_same_rows_in_the_same_order_as_in_process():
    batches = [_rows(list(range(i, i + 40))) for i in range(0, 120, 40)] + [_rows([])]
    with ProcessPool(_work()) as pool:
        pairs = list(pool.map(batches))
    here = list(map_batches("in_process", _work(), batches))
    assert len(pairs) == len(here) == 4
    for (kept, rejected), (kept_here, rejected_here) in zip(pairs, here, strict=True):
        assert kept.to_pylist() == kept_here.to_pylist() and kept.schema == kept_here.schema
        assert rejected.to_pylist() == rejected_here.to_pylist()


def test_a_crashing_row_is_rejected_and_the_rest_kept():
    numbers = list(range(40))
    numbers[13] = CRASH
    with ProcessPool(_work()) as pool:
        kept, rejected = _outcomes(pool.map([_rows(numbers[:30]), _rows(numbers[30:])]))
    assert [r["n"] for r in kept] == [n * n for n in numbers if n % 2 == 0]
    crashed = [r for r in rejected if r["reason"] != "odd"]
    assert [(r["origin_key"], r["reason"]) for r in crashed] == [("k1001", "worker_crashed")]
    assert "SIGSEGV" in crashed[0]["detail"]
    assert crashed[0]["sample_id"] == make_sample_id("s", "k1001")
    # rejects stay in row order, the blamed row among them
    assert [r["origin_key"] for r in rejected] == [f"k{n}" for n in numbers if n % 2]


def test_a_stage_that_reports_its_rows_is_handed_runs_with_the_same_outcome_and_blame(
    tmp_path,
):
    sizes = tmp_path / "sizes.txt"
    numbers = list(range(40))
    numbers[13], numbers[35] = CRASH, HANG
    reporting = BatchWork(
        "numbers",
        _setup_reporting,
        (str(sizes),),
        resources=Resources(processes=2, time_limit_s=5.0, reports_rows=True),
    )
    batches = [_rows(numbers[:30]), _rows(numbers[30:])]
    with ProcessPool(reporting) as pool:
        pairs = list(pool.map(batches))
    with ProcessPool(_work(time_limit_s=5.0)) as pool:
        assert _outcomes(pool.map(batches)) == _outcomes(pairs)
    kept, rejected = _outcomes(pairs)
    assert [r["n"] for r in kept] == [n * n for n in numbers if n % 2 == 0]
    blamed = [(r["origin_key"], r["reason"]) for r in rejected if r["reason"] != "odd"]
    assert blamed == [("k1001", "worker_crashed"), ("k1003", "worker_timeout")]
    # handed runs of rows (never past a flush), not one row per call
    handed = [int(n) for n in sizes.read_text().split()]
    assert max(handed) == FLUSH_ROWS and sum(handed) < 2 * len(numbers)


def test_a_row_over_its_time_limit_is_rejected():
    with ProcessPool(_work(time_limit_s=5.0)) as pool:
        kept, rejected = _outcomes(pool.map([_rows([0, 1, 2, HANG, 4])]))
    assert [r["n"] for r in kept] == [0, 4, 16]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [
        ("k1", "odd"), ("k1003", "worker_timeout")]  # fmt: skip
    assert "within 5 s" in rejected[1]["detail"]


def test_a_stage_names_the_item_and_its_limit_in_the_blame():
    work = BatchWork(
        "numbers",
        _setup,
        resources=Resources(processes=1, time_limit_s=30.0, item_time_limit_s=3.0),
        blame=_blame_items,
    )
    with ProcessPool(work) as pool:
        _, rejected = _outcomes(pool.map([_rows([20, HANG_ITEM, 22])]))
    assert [(r["origin_key"], r["reason"], r["detail"]) for r in rejected] == [
        ("k1005", "custom", "timeout row 1005 item 1 limit 3.0")
    ]


def test_a_worker_that_dies_outside_any_row_fails_the_run():
    work = BatchWork("numbers", _crash_on_setup, resources=Resources(processes=1))
    with ProcessPool(work) as pool, pytest.raises(RuntimeError, match="outside any row"):
        list(pool.map([_rows([1, 2])]))


def test_an_exception_in_the_stage_fails_the_run():
    with ProcessPool(_work()) as pool, pytest.raises(RuntimeError, match="a bug, not a bad row"):
        list(pool.map([_rows([1, FAIL, 2])]))


def test_map_partition_runs_a_stage_on_the_configured_engine(tmp_path):
    storage = Storage(str(tmp_path))
    with storage.writer("upstream", "s", SCHEMA) as writer:
        writer.write(pa.Table.from_batches([_rows([0, 1, 2, CRASH, 4])]))
    work = BatchWork(UNIFIED, _setup, resources=Resources(processes=1))
    pooled = ExecutionParams(local_engines={UNIFIED: "process_pool"})
    assert pooled.engine_for(UNIFIED) == "process_pool"
    assert ExecutionParams().engine_for(UNIFIED) == "in_process"
    assert ExecutionParams().engine_for(CLEANED, isolated=True) == "process_pool"
    seen = []
    with WorkerPools() as pools:
        mapped = map_partition(
            pooled, storage, "upstream", "s", work, batch_size=2, progress=seen.append, pools=pools
        )
        kept, rejected = _outcomes(mapped)
        assert len(pools._pools) == 1  # warm for the next partition
    assert [r["n"] for r in kept] == [0, 4, 16]
    assert [(r["origin_key"], r["reason"]) for r in rejected] == [
        ("k1", "odd"), ("k1001", "worker_crashed")]  # fmt: skip
    assert sum(seen) == 5 and mapped.info == {}
