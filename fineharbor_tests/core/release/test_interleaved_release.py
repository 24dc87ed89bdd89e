"""An interleaved source in a release beside FineVision sources: OBELICS layout by default (its
own card config, outside `default`), FineVision layout on request; both load with `datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
import yaml

from fineharbor.core.config import parse_config
from fineharbor.core.decontam.match import DECONTAM_REJECT_SCHEMA
from fineharbor.core.interleaved import document_segments, document_turns
from fineharbor.core.pipeline import DECONTAMINATED, DEDUPLICATED, SIGNATURES
from fineharbor.core.release.build import RELEASE_INPUT_ASSET, build_release_mix
from fineharbor.core.signatures.compute import SIGNATURE_SCHEMA
from fineharbor.core.storage import Storage
from fineharbor.defs.resources import STAGE_TABLES
from fineharbor.defs.sql_models import SQL_DIR
from fineharbor.testing.release_input import SCORED_SCHEMA, SOURCES, image, write_input

DOCS = "  - {name: docs, reader: interleaved, location: d, license: cc0-1.0}\n"


def _write_documents(storage: Storage, n: int = 3) -> None:
    rows = []
    for i in range(n):
        texts = [f"Intro {i}.", None, f"After the first image {i}.", None]
        segments = document_segments(texts, 2)
        rows.append(
            {
                "sample_id": f"docs-{i}",
                "source": "docs",
                "origin_uri": None,
                "origin_key": f"d{i}",
                "images": [{"bytes": image(500 + 2 * i + k), "path": None} for k in range(2)],
                "texts": document_turns(segments),
                "segments": segments,
                "metadata": json.dumps({"url": f"https://e.org/{i}"}),
                "quality_score": 1.5,
            }
        )
    table = pa.Table.from_pylist(rows, schema=SCORED_SCHEMA)
    for asset, reject in ((RELEASE_INPUT_ASSET, None), (DECONTAMINATED, DECONTAM_REJECT_SCHEMA)):
        kwargs = {"reject_schema": reject} if reject is not None else {}
        with storage.writer(asset, "docs", SCORED_SCHEMA, **kwargs) as writer:
            writer.write(table)
    with storage.writer(DEDUPLICATED, "docs", SCORED_SCHEMA) as writer:
        writer.write(table)
    signatures = [
        {"sample_id": r["sample_id"], "source": "docs", "image_index": k, "phash": 1000 * i + k}
        for i, r in enumerate(rows)
        for k in range(2)
    ]
    with storage.writer(SIGNATURES, "docs", SIGNATURE_SCHEMA) as writer:
        writer.write(pa.Table.from_pylist(signatures, schema=SIGNATURE_SCHEMA))


@pytest.mark.parametrize("layout", ["obelics", "finevision"])
def test_documents_release_in_their_layout(tmp_path, home, layout):
    storage = Storage(str(home))
    write_input(storage)
    _write_documents(storage)
    text = SOURCES + DOCS + f"release: {{name: mix, version: '1', interleaved_layout: {layout}}}\n"
    project = parse_config(yaml.safe_load(text), tmp_path)
    result = build_release_mix(project, storage, STAGE_TABLES, SQL_DIR)
    root = Path(result.path)
    docs = datasets.load_dataset(
        "parquet", data_files=str(root / "data" / "docs" / "*.parquet"), split="train"
    )
    assert docs.num_rows == 3
    configs = yaml.safe_load((root / "README.md").read_text().split("---\n")[1])["configs"]
    default = next(c for c in configs if c["config_name"] == "default")["data_files"][0]["path"]
    if layout == "finevision":
        assert docs.column_names[:3] == ["images", "texts", "source"]
        assert [len(r) for r in docs["images"]] == [2, 2, 2]
        assert docs[0]["texts"] == [
            {"user": "", "assistant": "Intro 0.\n\nAfter the first image 0."}
        ]
        assert default == "data/*/train-*.parquet"
        return
    assert docs.column_names[:3] == ["images", "texts", "metadata"]
    row = docs[0]
    assert row["texts"] == ["Intro 0.", None, "After the first image 0.", None]
    assert [im is not None for im in row["images"]] == [False, True, False, True]
    assert row["images"][1].size == (64, 48)
    assert json.loads(row["metadata"]) == {"url": "https://e.org/0"}
    assert "docs" not in str(default) and "data/pairs/train-*.parquet" in default
    others = datasets.load_dataset(
        "parquet", data_files=[str(root / p) for p in default], split="train"
    )
    assert set(others["source"]) == {"pairs", "chats"}
