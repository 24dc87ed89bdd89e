"""The review loop end to end: a new source added with `map-source --write` is ingested, gets a
review page linked from its metadata, stays out of the release until approved, enters it after
approval, and a flagged sample lands in the release's rejects as `human_flagged`."""

from pathlib import Path

import dagster as dg
import pytest

from fineharbor.cli import main
from fineharbor.core.pipeline import CLEANED, RELEASE
from fineharbor.core.release.select import HUMAN_FLAGGED
from fineharbor.core.review.gate import project_gate
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.release import CHECK_REVIEWED, RELEASE_ASSETS
from fineharbor.defs.resources import FineharborProject
from fineharbor.defs.review import project_reviews, source_config
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.defs.pipeline import resources, run_pipeline

CAPTIONS = [
    "A small red ball lies on the green grass next to a wooden fence.",
    "Two brown dogs run across a sandy beach under a bright blue sky.",
    "An old stone bridge crosses a quiet river in the early morning light.",
    "A yellow taxi waits at a busy street corner in the middle of the city.",
]


@pytest.fixture
def project(tmp_path, home):
    folder = tmp_path / "landing" / "critters"
    folder.mkdir(parents=True)
    for index, caption in enumerate(CAPTIONS):
        (folder / f"{index}.jpg").write_bytes(make_image_bytes(40 + index))
        (folder / f"{index}.txt").write_text(caption)
    config = tmp_path / "fineharbor.yaml"
    # one cleaning worker, no language model: this test is about the review loop
    config.write_text(
        "# the project\nsources: []\n\nstages:\n  clean: {processes: 1, check_language: false}\n  clip_score: {model: null}\n"
    )
    return config, folder


def release(project, instance, require_review=True):
    """Materialize release_mix over what decontamination kept; its reviewed-sources check."""
    if not require_review:
        config = Path(project.config_path)
        config.write_text(config.read_text() + "release: {require_review: false}\n")
        project = FineharborProject(config_path=project.config_path, home=project.home)
    result = dg.materialize(
        RELEASE_ASSETS, instance=instance, resources=resources(project), raise_on_error=False
    )
    if not require_review:
        config.write_text(config.read_text().replace("release: {require_review: false}\n", ""))
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == CHECK_REVIEWED]
    released = project.storage.read_table(RELEASE)
    rejects = project.storage.read_table(RELEASE, kind="rejects")
    return check, released, rejects


@pytest.mark.slow
def test_new_source_reviewed_before_release(project, home, monkeypatch, capsys):
    config, folder = project
    assert main(["--config", str(config), "map-source", str(folder), "--write"]) == 0
    capsys.readouterr()
    resource = FineharborProject(config_path=str(config), home=str(home))
    assert resource.config.source_names == ["critters"]
    assert resource.config.source("critters").mapping.caption == "txt"

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["critters"])
        run_pipeline(resource, instance, ["critters"])
        event = instance.get_latest_materialization_event(dg.AssetKey(CLEANED))
        link = event.asset_materialization.metadata["review_page"].value
        page = home / "review" / "critters.html"
        assert link == f"file://{page}" and "unreviewed" in page.read_text()
        cleaned = resource.storage.read_table(CLEANED, "critters")
        ids = sorted(cleaned.column("sample_id").to_pylist())
        assert len(ids) >= 2

        # Unreviewed: kept out, every sample in the rejects with the reason.
        check, released, rejects = release(resource, instance)
        assert check.passed and released.num_rows == 0
        assert set(rejects.column("reason").to_pylist()) == {"source_not_approved"}
        assert sorted(rejects.column("sample_id").to_pylist()) == ids
        # Opting out of review releases it (the check reports no gate was applied).
        check, released, _ = release(resource, instance, require_review=False)
        assert check.passed and released.num_rows == len(ids)
        assert check.metadata["require_review"].value is False

        monkeypatch.setenv("FINEHARBOR_REVIEWER", "dana")
        args = ["--config", str(config), "review", "critters"]
        assert main([*args, "--approve"]) == 0
        assert "approved by dana" in page.read_text()  # the command refreshes the page
        # Approved, one sample flagged: the rest enters the release.
        capsys.readouterr()
        assert main([*args, "--flag", ids[0], "--note", "a watermark"]) == 0
        assert "warning" not in capsys.readouterr().out
        assert main([*args, "--flag", "no-such-id"]) == 0  # recorded, with a warning
        assert "warning: not in unified_samples of critters: no-such-id" in capsys.readouterr().out
        check, released, rejects = release(resource, instance)
        assert check.passed and sorted(released.column("sample_id").to_pylist()) == ids[1:]
        (row,) = rejects.to_pylist()
        assert row["sample_id"] == ids[0] and row["reason"] == HUMAN_FLAGGED
        assert row["detail"].startswith("flagged by dana at ") and "a watermark" in row["detail"]

        assert main([*args, "--reject", "--note", "licence unclear"]) == 0
        assert project_gate(project_reviews(resource), resource.config).allowed == []

    # Overrides reach the per-source stages of that source.
    assert main([*args, "--override", "clean.caption_min_words=2"]) == 0
    assert source_config(resource, "critters").stages.clean.caption_min_words == 2
    assert resource.config.stages.clean.caption_min_words == 5
