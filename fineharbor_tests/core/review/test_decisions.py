"""reviews.yaml: round trip, derived state, validation errors naming file and field, overrides,
and the `fineharbor review` command."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from fineharbor.cli import main
from fineharbor.core.config import ConfigError, load_config
from fineharbor.core.review.decisions import (
    Approve,
    Flag,
    Override,
    Reject,
    ReviewLog,
    effective_stage_params,
    load_reviews,
    mapping_fingerprint,
    project_for_source,
    reviews_path,
    save_reviews,
)
from fineharbor.core.review.gate import project_gate

CONFIG = """
sources:
  - name: charts
    reader: hf_parquet
    location: charts
    mapping: {preset: cauldron}
  - name: bench
    reader: hf_parquet
    location: bench
    mapping: {preset: finevision}
    role: benchmark
"""
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def project_file(tmp_path: Path) -> Path:
    path = tmp_path / "fineharbor.yaml"
    path.write_text(CONFIG)
    return path


def at(minutes: int) -> datetime:
    return T0.replace(minute=minutes)


def test_round_trip_and_derived_state(project_file):
    project = load_config(project_file)
    source = project.source("charts")
    log = ReviewLog()
    for entry in (
        Reject(action="reject", by="ann", at=at(1), note="mapping drops turns"),
        Approve(action="approve", by="bob", at=at(2), mapping=mapping_fingerprint(source)),
        Flag(action="flag", by="bob", at=at(3), sample_ids=["a1", "b2", "c3"], note="watermark"),
        Flag(action="unflag", by="ann", at=at(4), sample_ids=["b2"]),
        Override(action="override", by="ann", at=at(5), key="clean.caption_min_words", value=3),
        Override(action="override", by="ann", at=at(6), key="clean.caption_min_words", value=2),
    ):
        log = log.with_decision("charts", entry)
    path = reviews_path(project_file)
    assert path == project_file.parent / "reviews.yaml"
    save_reviews(log, path)
    assert load_reviews(path, project) == log
    raw = yaml.safe_load(path.read_text())
    assert list(raw["sources"]["charts"][0].items()) == [
        ("action", "reject"),
        ("by", "ann"),
        ("at", "2026-11-01T09:01:00Z"),
        ("note", "mapping drops turns"),
    ]
    assert "note" not in raw["sources"]["charts"][1]
    state = log.state("charts")
    assert state.status == "approved" and state.decided.by == "bob"
    assert set(state.flagged) == {"a1", "c3"}
    assert state.flagged["a1"] == "flagged by bob at 2026-11-01T09:03:00+00:00: watermark"
    assert state.overrides == {"clean.caption_min_words": 2}
    assert log.state("bench").status == "unreviewed"
    assert load_reviews(project_file.parent / "absent.yaml") == ReviewLog()
    # a source removed from the project keeps its history and blocks nothing
    removed = log.with_decision("gone", Reject(action="reject", by="ann", at=at(7)))
    save_reviews(removed, path)
    assert load_reviews(path, project).state("gone").status == "rejected"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("sources: {charts: [{action: bless, by: a, at: 2026-01-01T00:00:00Z}]}", "action"),
        ("sources: {charts: [{action: reject, at: 2026-01-01T00:00:00Z}]}", "charts.0.reject.by"),
        ("sources: {charts: [{action: reject, by: a, at: yesterday}]}", "charts.0.reject.at"),
        ("sources: {charts: [{action: flag, by: a, at: 2026-01-01T00:00:00Z}]}", "sample_ids"),
        ("sources: {Bad Name: []}", "not a valid source name"),
        ("version: 2", "version"),
        ("sources: [", "not valid YAML"),
    ],
)
def test_invalid_files_name_file_and_field(project_file, content, problem):
    path = reviews_path(project_file)
    path.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_reviews(path)
    assert str(path) in str(error.value) and problem in str(error.value)


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (
            "charts: [{action: override, by: a, at: 2026-01-01T00:00:00Z, key: clean.nope, "
            "value: 1}]",
            "clean has no 'nope'",
        ),
        (
            "charts: [{action: override, by: a, at: 2026-01-01T00:00:00Z, key: clean.caption_min_words, "
            "value: many}]",
            "clean.caption_min_words",
        ),
    ],
)
def test_decisions_checked_against_the_project(project_file, entries, problem):
    path = reviews_path(project_file)
    path.write_text(f"sources:\n  {entries}\n")
    with pytest.raises(ConfigError, match="invalid reviews file") as error:
        load_reviews(path, load_config(project_file))
    assert problem in str(error.value)


def test_overrides_apply_to_that_source_only(project_file):
    project = load_config(project_file)
    log = ReviewLog().with_decision(
        "charts",
        Override(action="override", by="a", at=T0, key="clean.caption_min_words", value=1),
    )
    assert project.stages.clean.caption_min_words != 1
    assert project_for_source(project, log, "charts").stages.clean.caption_min_words == 1
    assert project_for_source(project, log, "bench") is project
    with pytest.raises(ValueError, match="names a section"):
        effective_stage_params(project.stages, {"clean": 1})


def test_review_command_records_decisions(project_file, home, capsys, monkeypatch):
    monkeypatch.setenv("FINEHARBOR_REVIEWER", "carol")
    args = ["--config", str(project_file), "review", "charts"]
    assert main([*args, "--approve", "--note", "looks right"]) == 0
    assert main([*args, "--flag", "s1", "s2", "--override", "clean.caption_min_words=2"]) == 0
    assert main([*args, "--override", "clean.caption_min_words=lots"]) == 2
    assert "clean.caption_min_words" in capsys.readouterr().err
    assert main([*args, "--override", "nonsense"]) == 2
    assert main(["--config", str(project_file), "review", "ghost", "--approve"]) == 2
    log = load_reviews(reviews_path(project_file))
    actions = [(d.action, d.by) for d in log.decisions("charts")]
    assert actions == [("approve", "carol"), ("flag", "carol"), ("override", "carol")]
    state = log.state("charts")
    assert state.status == "approved" and state.overrides == {"clean.caption_min_words": 2}
    assert set(state.flagged) == {"s1", "s2"}
    assert "approved by carol" in (home / "review" / "charts.html").read_text()
    assert main(["--config", str(project_file), "review-pages"]) == 0
    assert "never enters a release" in (home / "review" / "bench.html").read_text()
    index = (home / "review" / "index.html").read_text()
    assert 'href="charts.html"' in index and 'href="bench.html"' in index


def test_the_demo_sources_are_approved_for_their_current_mappings(home):
    """The repository's reviews.yaml: a changed demo mapping must be approved again."""
    root = Path(__file__).resolve().parents[3]
    project = load_config(root / "fineharbor.yaml")
    gate = project_gate(load_reviews(reviews_path(root / "fineharbor.yaml"), project), project)
    assert gate.blocked == {}
    assert gate.allowed == [s.name for s in project.sources if s.role == "train"]


def test_review_takes_several_overrides_at_once(project_file, home, monkeypatch):
    monkeypatch.setenv("FINEHARBOR_REVIEWER", "dan")
    args = ["--config", str(project_file), "review", "charts", "--override"]
    assert main([*args, "clean.caption_min_words=2", "clean.web_pair_rules=never"]) == 0
    state = load_reviews(reviews_path(project_file)).state("charts")
    assert state.overrides == {"clean.caption_min_words": 2, "clean.web_pair_rules": "never"}
    # checked together with the earlier ones: min words 2 > max words 1 is refused, nothing saved
    assert main([*args, "clean.caption_max_words=1"]) == 2
    assert load_reviews(reviews_path(project_file)).state("charts").overrides == state.overrides


@pytest.mark.parametrize(
    "content", [b"version: 1\nsources: {charts: []}  # caf\xe9\n", b"\xff\xfe"]
)
def test_reviews_file_that_is_not_utf8_gives_one_line(project_file, content):
    path = reviews_path(project_file)
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_reviews(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "not UTF-8" in message
    assert len(message.splitlines()) == 1


def test_reviews_source_name_with_a_trailing_newline_is_refused(project_file):
    path = reviews_path(project_file)
    path.write_text('version: 1\nsources: {"charts\\n": []}\n')
    with pytest.raises(ConfigError, match="not a valid source name"):
        load_reviews(path)


def test_status_with_a_missing_project_file_is_one_line(tmp_path, home, capsys):
    missing = tmp_path / "nowhere" / "fineharbor.yaml"
    assert main(["--config", str(missing), "status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fineharbor: ") and str(missing) in err and "no such project file" in err
    assert len(err.splitlines()) == 1
