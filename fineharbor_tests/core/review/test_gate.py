"""The release gate per source, the `human_flagged` filter, and release violations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from fineharbor.core.config import parse_config
from fineharbor.core.release.params import ReleaseRecipe
from fineharbor.core.release.select import HUMAN_FLAGGED, SOURCE_NOT_APPROVED, Candidates
from fineharbor.core.review.decisions import Approve, Flag, Reject, ReviewLog, mapping_fingerprint
from fineharbor.core.review.gate import (
    project_gate,
    release_gate,
    release_violations,
    review_release_gate,
)

T = datetime(2026, 11, 1, tzinfo=UTC)


def approve(fingerprint: str = "f1", by: str = "ann") -> Approve:
    return Approve(action="approve", by=by, at=T, mapping=fingerprint)


def reject(note: str = "") -> Reject:
    return Reject(action="reject", by="bob", at=T, note=note)


def test_only_approved_sources_pass():
    log = ReviewLog()
    log = log.with_decision("good", approve())
    log = log.with_decision("bad", reject("watermarked"))
    log = log.with_decision("again", reject()).with_decision("again", approve())
    log = log.with_decision("undone", approve()).with_decision("undone", reject())
    gate = release_gate(log, ["new", "good", "bad", "again", "undone"])
    assert gate.allowed == ["good", "again"]
    assert gate.blocked["new"].startswith("unreviewed")
    assert "fineharbor review new --approve" in gate.blocked["new"]
    assert (
        gate.blocked["bad"].startswith("rejected by bob") and "watermarked" in gate.blocked["bad"]
    )
    assert gate.blocked["undone"].startswith("rejected")


def test_a_changed_mapping_needs_a_new_approval():
    log = ReviewLog().with_decision("s", approve("f1"))
    assert release_gate(log, ["s"], {"s": "f1"}).allowed == ["s"]
    gate = release_gate(log, ["s"], {"s": "f2"})
    assert gate.allowed == [] and gate.blocked["s"].startswith("stale approval")


def _project():
    return parse_config(
        {
            "sources": [
                {
                    "name": n,
                    "reader": "hf_parquet",
                    "location": n,
                    "mapping": {"preset": "cauldron"},
                }
                for n in ("a", "b")
            ]
            + [
                {
                    "name": "bench",
                    "reader": "hf_parquet",
                    "location": "bench",
                    "mapping": {"preset": "finevision"},
                    "role": "benchmark",
                }
            ]
        },
        base_dir=Path("/data"),
    )


def test_project_gate_uses_current_mappings_and_skips_benchmarks():
    project = _project()
    log = ReviewLog().with_decision("a", approve(mapping_fingerprint(project.source("a"))))
    log = log.with_decision("bench", approve(mapping_fingerprint(project.source("bench"))))
    gate = project_gate(log, project)
    assert gate.allowed == ["a"] and list(gate.blocked) == ["b"]


def rows(ids, source="a") -> pa.Table:
    return pa.table(
        {
            "sample_id": ids,
            "source": [source] * len(ids),
            "origin_key": [f"k{i}" for i in ids],
            "texts": [[{"user": "q", "assistant": "x"}]] * len(ids),
        }
    )


def test_release_gate_rejects_blocked_sources_and_flagged_samples_accounting_for_every_row():
    project = _project()
    log = ReviewLog().with_decision("a", approve(mapping_fingerprint(project.source("a"))))
    log = log.with_decision(
        "a", Flag(action="flag", by="ann", at=T, sample_ids=["2", "9"], note="blurry")
    )
    gate = review_release_gate(log, project)
    assert set(gate.blocked) == {"b"} and set(gate.flagged["a"]) == {"2", "9"}

    candidates = Candidates(ReleaseRecipe(), gate)
    candidates.admit(rows(["1", "2", "3"]).to_batches()[0], "a")
    candidates.admit(rows(["5", "6"], "b").to_batches()[0], "b")
    assert candidates.chosen("a").to_pylist() == ["1", "3"]
    assert candidates.chosen("b").to_pylist() == []
    flag, *blocked = candidates.rejects().to_pylist()
    assert (flag["sample_id"], flag["origin_key"], flag["reason"]) == ("2", "k2", HUMAN_FLAGGED)
    assert flag["detail"].startswith("flagged by ann at ") and "blurry" in flag["detail"]
    assert [r["reason"] for r in blocked] == [SOURCE_NOT_APPROVED] * 2
    assert "unreviewed" in blocked[0]["detail"]


@pytest.mark.parametrize(
    ("released", "problem"),
    [
        (pa.concat_tables([rows(["1"]), rows(["5"], "b")]), "1 samples of b: unreviewed"),
        (rows(["1", "2"]).select(["sample_id", "source"]), "1 flagged samples of a released (2)"),
        (rows(["7"], "bench"), "not a configured train source"),
        (rows(["1", "3"]), None),
    ],
)
def test_release_violations(released, problem):
    project = _project()
    log = ReviewLog().with_decision("a", approve(mapping_fingerprint(project.source("a"))))
    log = log.with_decision("a", Flag(action="flag", by="ann", at=T, sample_ids=["2"]))
    problems = release_violations(released, log, project)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]
