"""An interleaved source from its raw OBELICS Parquet to a release in the OBELICS layout that
`datasets` loads, with its documents deduplicated per document text on the way."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import datasets
import pytest

from fineharbor.core.pipeline import DEDUPLICATED, RAW
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.release import RELEASE_ASSETS
from fineharbor.defs.resources import FineharborProject
from fineharbor.testing.documents import document, write_obelics_parquet
from fineharbor.testing.images import make_image_bytes
from fineharbor_tests.defs.pipeline import resources, run_pipeline

CONFIG = """
sources:
  - name: docs
    reader: interleaved
    location: docs
    mapping: {origin_key: id}
stages:
  clip_score: {model: null}
release: {name: docs, version: "1", require_review: false}
"""

PARAGRAPHS = [
    "The harbour at dawn, with fishing boats returning to the quay after a night at sea.",
    "A lighthouse on the rocks guides ships past the reef at the mouth of the bay.",
    "Nets are mended on the pier while gulls circle above the morning market.",
    "Cranes unload containers from a cargo ship moored at the deep water berth.",
]


@pytest.mark.slow
def test_interleaved_source_reaches_an_obelics_release(tmp_path, home):
    rows = [
        document(
            f"d{i}",
            [PARAGRAPHS[i], make_image_bytes(20 + i), PARAGRAPHS[(i + 1) % 4] + f" Page {i}."],
        )
        for i in range(4)
    ]
    # the same document text, other image: a per-document text duplicate
    rows.append(document("copy", [PARAGRAPHS[0], make_image_bytes(40), PARAGRAPHS[1] + " Page 0."]))
    rows.append({**document("bad", ["x", make_image_bytes(41)]), "texts": ["x", "y"]})
    write_obelics_parquet(tmp_path / "docs" / "part-0.parquet", rows)
    (tmp_path / "fineharbor.yaml").write_text(CONFIG)
    project = FineharborProject(config_path=str(tmp_path / "fineharbor.yaml"), home=str(home))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, ["docs"])
        run_pipeline(project, instance, ["docs"])
        assert dg.materialize(
            RELEASE_ASSETS, instance=instance, resources=resources(project)
        ).success
    storage = project.storage
    raw_rejects = storage.read_table(RAW, "docs", kind="rejects").to_pylist()
    assert [r["reason"] for r in raw_rejects] == ["document_misaligned"]
    dedup_rejects = storage.read_table(DEDUPLICATED, "docs", kind="rejects").to_pylist()
    assert [r["origin_key"] for r in dedup_rejects] in (["copy"], ["d0"])

    root = Path(storage.path("releases", "docs", "1"))
    loaded = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in root.glob("data/**/*.parquet")), split="train"
    )
    assert loaded.num_rows == 4
    assert set(loaded.column_names) >= {"images", "texts", "metadata", "source"}
    for row in loaded:
        images, texts = row["images"], row["texts"]
        assert len(images) == len(texts) == 3
        assert [im is None for im in images] == [True, False, True]
        assert [t is None for t in texts] == [False, True, False]
        assert images[1].size == (320, 240)  # a decoded PIL image
        assert texts[0] in PARAGRAPHS
