"""The review loop end to end: a new source added with `map-source --write` is ingested, gets a
review page linked from its metadata, stays out of the release until approved, enters it after
approval, and a flagged sample lands in the release's rejects as `human_flagged`. The release
here is a stand-in for release_mix that uses the core gate and filter as the real one must."""

import dagster as dg
import pyarrow as pa
import pytest

from fineharbor.cli import main
from fineharbor.core.review.gate import HUMAN_FLAGGED, apply_human_flags, project_gate
from fineharbor.core.schema import REJECT_SCHEMA
from fineharbor.defs.ingest import cleaned_samples, raw_samples, unified_samples
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.resources import FineharborProject
from fineharbor.defs.review import project_reviews, release_review_check, source_config
from fineharbor_tests.conftest import make_image_bytes

RELEASE_SCHEMA = pa.schema([("sample_id", pa.string()), ("source", pa.string())])
CAPTIONS = [
    "A small red ball lies on the green grass next to a wooden fence.",
    "Two brown dogs run across a sandy beach under a bright blue sky.",
    "An old stone bridge crosses a quiet river in the early morning light.",
    "A yellow taxi waits at a busy street corner in the middle of the city.",
]


def stand_in_release(respect_reviews: bool) -> dg.AssetsDefinition:
    @dg.asset(name="release_mix")
    def release_mix(project: FineharborProject) -> None:
        config, storage = project.config, project.storage
        reviews = project_reviews(project)
        names = project_gate(reviews, config).allowed if respect_reviews else config.source_names
        with storage.writer("release_mix", None, RELEASE_SCHEMA) as writer:
            for name in names:
                for batch in storage.iter_batches("cleaned_samples", name):
                    kept, rejected = apply_human_flags(batch, reviews.state(name).flagged)
                    writer.write(kept)
                    writer.reject(rejected)

    return release_mix


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
        "# the project\nsources: []\n\nstages:\n  clean: {processes: 1, check_language: false}\n"
    )
    return config, folder


def release(project, instance, respect_reviews=True):
    result = dg.materialize(
        [stand_in_release(respect_reviews), release_review_check()],
        instance=instance,
        resources={"project": project},
        raise_on_error=False,
    )
    (check,) = result.get_asset_check_evaluations()
    released = project.storage.read_table("release_mix")
    rejects = project.storage.read_table("release_mix", kind="rejects")
    return check, released, rejects


def test_new_source_reviewed_before_release(project, home, monkeypatch, capsys):
    config, folder = project
    assert main(["--config", str(config), "map-source", str(folder), "--write"]) == 0
    capsys.readouterr()
    resource = FineharborProject(config_path=str(config), home=str(home))
    assert resource.config.source_names == ["critters"]
    assert resource.config.source("critters").mapping.caption == "txt"

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["critters"])
        result = dg.materialize(
            [raw_samples, unified_samples, cleaned_samples],
            partition_key="critters",
            instance=instance,
            resources={"project": resource},
        )
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("cleaned_samples"))
        link = event.asset_materialization.metadata["review_page"].value
        page = home / "review" / "critters.html"
        assert link == f"file://{page}" and "unreviewed" in page.read_text()
        cleaned = resource.storage.read_table("cleaned_samples", "critters")
        ids = sorted(cleaned.column("sample_id").to_pylist())
        assert len(ids) >= 2

        # A release that ignores the reviews is stopped by the blocking check.
        check, released, _ = release(resource, instance, respect_reviews=False)
        assert not check.passed and released.num_rows == len(ids)
        assert "critters: unreviewed" in check.metadata["violations"].value

        # Unreviewed: kept out.
        check, released, _ = release(resource, instance)
        assert check.passed and released.num_rows == 0

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
        assert rejects.schema == REJECT_SCHEMA
        (row,) = rejects.to_pylist()
        assert row["sample_id"] == ids[0] and row["reason"] == HUMAN_FLAGGED
        assert row["detail"].startswith("flagged by dana at ") and "a watermark" in row["detail"]

        assert main([*args, "--reject", "--note", "licence unclear"]) == 0
        assert project_gate(project_reviews(resource), resource.config).allowed == []

    # Overrides reach the per-source stages of that source.
    assert main([*args, "--override", "clean.caption_min_words=2"]) == 0
    assert source_config(resource, "critters").stages.clean.caption_min_words == 2
    assert resource.config.stages.clean.caption_min_words == 5
