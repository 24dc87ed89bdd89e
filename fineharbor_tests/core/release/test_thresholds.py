"""Every score is thresholded in one place, the release recipe: each threshold removes exactly
the candidates beyond it, under a reason named after the score, and the card shows each score's
distribution over the candidates and what each threshold removed."""

from pathlib import Path

import numpy as np
import pytest

from fineharbor.core.config import ConfigError, load_config
from fineharbor.core.pipeline import QUALITY_MODEL
from fineharbor.core.release.build import RELEASE_INPUT_ASSET, build_release_mix
from fineharbor.core.release.params import ReleaseRecipe
from fineharbor.core.release.select import THRESHOLDS
from fineharbor.core.storage import Storage
from fineharbor.defs.resources import STAGE_TABLES
from fineharbor.defs.sql_models import SQL_DIR
from fineharbor.testing.release_input import SOURCES, project, write_input

from .test_release import _card_tables, release_dir
from .test_selection import select_rows

TRAIN = ("pairs", "chats")


@pytest.fixture
def storage(home):
    return Storage(str(home))


def _candidates(storage: Storage) -> list[dict]:
    columns = ["sample_id", "clip_score", "quality_score", "punsafe", "pwatermark"]
    columns += ["aesthetic_score", "face_count", "pii_found"]
    return [
        row
        for source in TRAIN
        for row in storage.read_table(RELEASE_INPUT_ASSET, source, columns=columns).to_pylist()
    ]


CASES = [
    ("clip_score_min: 0.3", "clip_score_low", lambda r: r["clip_score"] < 0.3),
    ("clip_score_max: 0.4", "clip_score_high", lambda r: r["clip_score"] > 0.4),
    ("quality_min: 1.5", "quality_low", lambda r: r["quality_score"] < 1.5),
    ("punsafe_max: 0.5", "punsafe_high", lambda r: r["punsafe"] > 0.5),
    ("pwatermark_max: 0.8", "watermark_high", lambda r: r["pwatermark"] > 0.8),
    ("aesthetic_score_min: 5.0", "aesthetic_low", lambda r: r["aesthetic_score"] < 5.0),
    # the release index has no pii_found column: the sample ids above are what is checked
    ("pii_max: 1", "pii_found", lambda r: len(r.get("pii_found", [])) > 1),
]


@pytest.mark.parametrize(("setting", "reason", "beyond"), CASES, ids=[c[1] for c in CASES])
def test_each_threshold_removes_the_rows_beyond_it_under_its_own_reason(
    tmp_path, storage, setting, reason, beyond
):
    write_input(storage)
    expected = {r["sample_id"] for r in _candidates(storage) if beyond(r)}
    assert 0 < len(expected) < 60  # the data has rows on both sides
    result = build_release_mix(project(tmp_path, f"  {setting}\n"), storage, STAGE_TABLES, SQL_DIR)
    rejects = result.rejects.to_pylist()
    assert {r["sample_id"] for r in rejects if r["reason"] == reason} == expected
    assert {r["reason"] for r in rejects} <= {reason, "benchmark_source"}
    column = next(t.column for t in THRESHOLDS if t.reason == reason)
    assert all(r["detail"].startswith(column) for r in rejects if r["reason"] == reason)
    assert not expected & set(result.index.column("sample_id").to_pylist())
    # the release index carries the score, and no released sample is beyond the threshold
    assert not any(beyond(r) for r in result.index.to_pylist())
    # the release_rejects SQL model (the card's and the catalog's table) counts them by name
    by_reason: dict[str, int] = {}
    for row in result.tables["release_rejects"].to_pylist():
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["samples"]
    assert by_reason[reason] == len(expected)


def test_a_missing_signal_passes_unless_scores_are_required():
    row = {"sample_id": "a", "source": "s", "origin_key": "k", "n_turns": 1, "punsafe": None}
    lenient, no_rejects = select_rows([row], ReleaseRecipe(punsafe_max=0.5))
    _, strict = select_rows([row], ReleaseRecipe(punsafe_max=0.5, require_scores=True))
    assert lenient == {"a": None} and not no_rejects
    assert [(r["reason"], r["detail"]) for r in strict] == [
        ("punsafe_high", "no punsafe; release.require_scores is true")
    ]


def test_a_sample_beyond_several_thresholds_is_rejected_once_for_the_first():
    row = {"sample_id": "a", "source": "s", "origin_key": "k", "n_turns": 1}
    row |= {"clip_score": 0.1, "pwatermark": 0.95, "aesthetic_score": 2.0}
    recipe = ReleaseRecipe(clip_score_min=0.3, pwatermark_max=0.8, aesthetic_score_min=5)
    assert [r["reason"] for r in select_rows([row], recipe)[1]] == ["clip_score_low"]
    _, rejects = select_rows([{**row, "clip_score": 0.5}], recipe)
    assert [r["detail"] for r in rejects] == ["pwatermark 0.95 > 0.8"]


def test_the_card_shows_each_distribution_and_what_each_threshold_removed(tmp_path, storage):
    write_input(storage)
    recipe = "  pwatermark_max: 0.8\n  aesthetic_score_min: 5.0\n  clip_score_min: 0.2\n"
    result = build_release_mix(project(tmp_path, recipe), storage, STAGE_TABLES, SQL_DIR)
    card = Path(release_dir(storage), "README.md").read_text()
    tables = _card_tables(card)
    shown = {row["signal"]: row for row in tables["Score distributions"]}
    candidates = _candidates(storage)
    assert set(shown) == {
        "clip_score",
        "quality_score",
        "punsafe",
        "pwatermark",
        "aesthetic_score",
        "face_count",
    }
    for column, row in shown.items():
        values = np.array([r[column] for r in candidates], np.float64)
        assert int(row["scored"]) == 60 and int(row["null"]) == 0
        assert float(row["p50"]) == pytest.approx(np.median(values), rel=1e-5)
        assert float(row["p05"]) == pytest.approx(np.quantile(values, 0.05), rel=1e-5)
        assert float(row["max"]) == pytest.approx(values.max(), rel=1e-5)
    beyond = {
        "pwatermark": sum(r["pwatermark"] > 0.8 for r in candidates),
        "aesthetic_score": sum(r["aesthetic_score"] < 5.0 for r in candidates),
        "clip_score": sum(r["clip_score"] < 0.2 for r in candidates),
    }
    assert {c: int(shown[c]["outside"]) for c in beyond} == beyond
    assert shown["pwatermark"]["threshold"] == "max 0.8"
    assert shown["punsafe"]["threshold"] == "off" and shown["punsafe"]["outside"] == "0"
    # removals: a sample is counted once, for the first threshold it fails
    filters = {row["reason code"].strip("`"): row for row in tables["Filters"]}
    reasons = [r["reason"] for r in result.rejects.to_pylist()]
    removed = {r: reasons.count(r) for r in ("clip_score_low", "watermark_high", "aesthetic_low")}
    assert all(removed.values())
    for reason, count in removed.items():
        assert int(filters[reason]["samples removed"]) == count
    assert filters["watermark_high"]["threshold"] == "0.8"
    assert filters["punsafe_high"]["threshold"] == "off"
    failing = [
        r
        for r in candidates
        if r["pwatermark"] > 0.8 or r["aesthetic_score"] < 5.0 or r["clip_score"] < 0.2
    ]
    assert sum(removed.values()) == len(failing) < sum(beyond.values())  # some fail two


@pytest.mark.parametrize(
    ("stage", "key", "replacement"),
    [
        ("clip_score", "lower", "release.clip_score_min"),
        ("clip_score", "upper", "release.clip_score_max"),
        (QUALITY_MODEL, "min_score", "release.quality_min"),
    ],
)
def test_an_old_stage_threshold_fails_at_load_naming_its_release_field(
    tmp_path, stage, key, replacement
):
    path = tmp_path / "fineharbor.yaml"
    path.write_text(SOURCES + f"stages:\n  {stage}: {{{key}: 0.3}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"stages.{stage}.{key} was removed" in message and replacement in message
    assert str(path) in message
