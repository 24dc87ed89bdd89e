"""A new user's first hour, through the CLI, on folders the demo never made: a hostile image
folder with no mapping (added by `map-source --write`), a near-duplicate photo set with hash signals only, and a URL list on a
machine whose DNS answers nothing. One project file, one `fineharbor materialize`."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
import yaml

from fineharbor import cli
from fineharbor.core.pipeline import CLEANED, DUPLICATES, RAW, UNIFIED
from fineharbor.core.storage import Storage
from fineharbor.testing.copies import copy_set, score_clusters, write_copy_set
from fineharbor.testing.corpus import OUTSIDE_MARK, write_hostile_corpus

pytestmark = pytest.mark.slow

URLS = 300
HOSTS = 30


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_data")
    corpus = write_hostile_corpus(root / "hostile", root / "outside")
    copies = copy_set(scenes=6, seed=3)
    write_copy_set(root / "copies", copies)
    with (root / "urls.jsonl").open("w") as handle:
        for i in range(URLS):
            url = f"http://img{i % HOSTS}.fineharbor-test.invalid/{i}.jpg"
            handle.write(json.dumps({"url": url, "caption": f"a photo number {i} of a cat"}) + "\n")
    config = root / "fineharbor.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"name": "copies", "reader": "image_folder", "location": "copies"},
                    {
                        "name": "offline_urls",
                        "reader": "url_list",
                        "location": "urls.jsonl",
                        "url_column": "url",
                        "mapping": {"preset": "laion", "caption": "caption"},
                    },
                ]
            }
        )
    )
    home = root / "home"
    patch = pytest.MonkeyPatch()
    patch.setenv("FINEHARBOR_HOME", str(home))
    patch.setenv("DAGSTER_HOME", str(home / "dagster"))
    patch.delenv("FINEHARBOR_STATE", raising=False)
    # the hostile folder is added as a new user adds a folder: map-source proposes its block
    mapped = cli.main(["--config", str(config), "map-source", str(root / "hostile"), "--write"])
    status = cli.main(["--config", str(config), "materialize"])
    again = cli.main(["--config", str(config), "materialize", "--dry-run"])
    assert mapped == 0
    yield Storage(str(home)), corpus, copies, status, again
    patch.undo()


def _table(storage: Storage, asset: str, partition: str | None, kind: str = "data"):
    return storage.read_table(asset, partition, kind=kind)


def test_the_first_run_ends_well_and_a_second_has_nothing_to_do(project):
    _, _, _, status, again = project
    assert status == 0  # no source is approved: no release, and the run still succeeds
    assert again == 0


def test_every_file_of_the_hostile_folder_is_a_row_or_a_reject(project):
    storage, corpus, _, _, _ = project
    rows = _table(storage, RAW, "hostile")
    rejects = _table(storage, RAW, "hostile", kind="rejects")
    assert rows.num_rows + rejects.num_rows + corpus.sidecars == corpus.entries
    for image_list in rows.column("images").to_pylist():
        assert all(OUTSIDE_MARK not in (image["bytes"] or b"") for image in image_list)
    cleaned = _table(storage, CLEANED, "hostile")
    # captions come from the sidecars only: no caption rule judged a file name, and the
    # valid images came through
    cleaned_rejects = _table(storage, CLEANED, "hostile", kind="rejects")
    text_reasons = {"text_empty", "caption_word_count", "alt_text_short", "language_not_allowed"}
    assert not text_reasons & set(cleaned_rejects.column("reason").to_pylist())
    assert cleaned.num_rows >= len(corpus.images) * 0.8
    captioned = [json.dumps(texts) for texts in cleaned.column("texts").to_pylist() if texts]
    assert 1 <= len(captioned) <= corpus.sidecars
    assert all("a photo of a cat" in t or "a dog running" in t for t in captioned)


def test_every_copy_shares_its_originals_cluster_and_no_two_photos_merge(project):
    storage, _, copies, _, _ = project
    unified = _table(storage, UNIFIED, "copies")
    name_of = dict(
        zip(*unified.select(["sample_id", "origin_key"]).to_pydict().values(), strict=True)
    )
    clusters = _table(storage, DUPLICATES, None)
    mine = clusters.filter(pc.equal(clusters.column("source"), "copies"))
    members = mine.select(["sample_id", "cluster_id"]).to_pydict().values()
    cluster_of = {name_of[s]: c for s, c in zip(*members, strict=True)}
    scores = score_clusters(copies, cluster_of)
    for transform, score in scores.items():
        assert score["recall"] in (None, 1.0), (transform, score)
        assert score["wrong_pairs"] == 0, (transform, score)


def test_an_offline_url_list_is_every_url_a_reject(project):
    storage, _, _, _, _ = project
    assert storage.count_rows(RAW, "offline_urls") == 0
    rejects = _table(storage, RAW, "offline_urls", kind="rejects")
    assert rejects.num_rows == URLS
    assert set(rejects.column("reason").to_pylist()) == {"download_dns_error"}
    assert all("fineharbor-test.invalid" in d for d in rejects.column("detail").to_pylist())
