"""Each byte stored once: decide stages write ids and their own columns, unified and cleaned
images are references to raw's, and every reader (Python and the DuckDB views) sees the rows
a full copy would hold."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineharbor.core.catalog import StageTable, connect_in_memory
from fineharbor.core.cleaning.build import build_cleaned_samples
from fineharbor.core.decontam.build import build_benchmark_index, build_decontaminated_samples
from fineharbor.core.dedup.build import build_deduplicated_samples, build_duplicate_clusters
from fineharbor.core.ingest import build_raw_samples, build_unified_samples
from fineharbor.core.pipeline import (
    CLEANED,
    DECONTAMINATED,
    DEDUPLICATED,
    RAW,
    SCORED,
    UNIFIED,
    table_stages,
)
from fineharbor.core.quality.stage import build_scored_samples
from fineharbor.core.schema import IMAGE_TYPE
from fineharbor.core.signatures.build import build_image_signatures
from fineharbor.core.storage import Storage
from fineharbor.core.stored import (
    PartitionIndex,
    drop_unchanged_images,
    fill_images,
    read_located_rows,
    read_stage_rows,
    read_stage_table,
    stage_schema,
)

DECIDED = (DEDUPLICATED, DECONTAMINATED, SCORED)
SOURCES = ("charts", "scenes")


def _images(rows: list[list[bytes | None]]) -> pa.Array:
    return pa.array(
        [[{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(r)] for r in rows],
        pa.list_(IMAGE_TYPE),
    )


def test_unchanged_images_become_references_and_resolve_back() -> None:
    before = _images([[b"a", b"b"], [], [b"c"]])
    kept = pa.table({"sample_id": ["x", "y", "z"], "images": _images([[b"a", b"B"], [], [b"c"]])})
    inputs = pa.table({"sample_id": ["z", "x", "y"], "images": before.take([2, 0, 1])})
    stored = drop_unchanged_images(kept, inputs)
    assert [[i["bytes"] for i in r] for r in stored.column("images").to_pylist()] == [
        [None, b"B"],
        [],
        [None],
    ]
    assert [[i["path"] for i in r] for r in stored.column("images").to_pylist()] == [
        ["0.png", "1.png"],
        [],
        ["0.png"],
    ]
    restored = fill_images(stored.column("images"), before)
    assert restored.to_pylist() == kept.column("images").combine_chunks().to_pylist()
    with pytest.raises(ValueError, match="count"):
        fill_images(stored.column("images"), _images([[b"a"], [], [b"c"]]))


@pytest.mark.slow
def test_decide_stages_store_ids_and_every_reader_sees_the_cleaned_rows(ingest_project) -> None:
    config, storage = ingest_project.config, ingest_project.storage
    for source in SOURCES:
        for build in (
            build_raw_samples,
            build_unified_samples,
            build_cleaned_samples,
            build_image_signatures,
        ):
            assert build(config, source, storage).conserved
    build_duplicate_clusters(config, storage)
    build_benchmark_index(config, storage)
    for source in SOURCES:
        assert build_deduplicated_samples(config, source, storage).conserved
        assert build_decontaminated_samples(config, source, storage).conserved
        assert build_scored_samples(config, source, storage)[0].conserved

    for source in SOURCES:
        # what is written: decisions hold no image or text; ingest holds no copy of raw's bytes
        for asset in DECIDED:
            for path in storage.files(asset, source):
                names = pq.read_schema(path, filesystem=storage.fs).names
                assert "images" not in names and "texts" not in names, (asset, names)
        unified = storage.read_table(UNIFIED, source)
        assert all(
            image["bytes"] is None for row in unified.column("images").to_pylist() for image in row
        )
        # what is read: references resolved to raw's bytes
        raw = {r["sample_id"]: r["images"] for r in storage.read_table(RAW, source).to_pylist()}
        resolved = read_stage_table(storage, UNIFIED, source).to_pylist()
        assert resolved and all(r["images"] == raw[r["sample_id"]] for r in resolved)
        cleaned = read_stage_table(storage, CLEANED, source)
        assert all(image["bytes"] for row in cleaned.column("images").to_pylist() for image in row)
        by_id = {r["sample_id"]: r for r in cleaned.to_pylist()}
        for asset in DECIDED:
            rows = read_stage_table(storage, asset, source)
            assert rows.schema.names[: len(cleaned.schema)] == cleaned.schema.names
            assert rows.schema == stage_schema(storage, asset, source)
            assert rows.num_rows == storage.count_rows(asset, source) > 0
            for row in rows.to_pylist():
                assert {k: row[k] for k in cleaned.schema.names} == by_id[row["sample_id"]]
        # a subset of columns, and only some ids, stream the same values
        some = pa.array(sorted(by_id)[:2])
        batches = read_stage_rows(
            storage, SCORED, source, columns=["texts", "clip_score"], sample_ids=some
        )
        picked = pa.Table.from_batches(list(batches))
        assert picked.column_names == ["texts", "clip_score"] and picked.num_rows == 2

    # the DuckDB views resolve the same rows
    tables = [StageTable(s.name, partitioned=s.per_source) for s in table_stages()]
    with connect_in_memory(storage, tables) as connection:
        for asset in (UNIFIED, CLEANED, *DECIDED):
            view = connection.sql(f"select * from {asset} order by sample_id").to_arrow_table()
            python = pa.concat_tables(read_stage_table(storage, asset, s) for s in SOURCES).sort_by(
                "sample_id"
            )
            assert view.column_names == python.column_names
            assert view.to_pylist() == python.to_pylist(), asset


def _write_groups(storage: Storage, asset: str, tables: list[pa.Table]) -> None:
    with storage.writer(asset, "p", tables[0].schema) as writer:
        for table in tables:  # one row group each
            writer.write(table)


def _reference_chain(storage: Storage, order: list[int]) -> list[str]:
    """scored (ids, a score) -> cleaned (texts, images by reference) -> unified (bytes), each
    of 4 row groups of 5 rows; ``order`` the scored rows' order."""
    ids = [f"id{i:02d}" for i in range(20)]
    groups = [range(g, g + 5) for g in range(0, 20, 5)]
    unified = [
        pa.table({"sample_id": [ids[i] for i in g], "images": _images([[b"%d" % i] for i in g])})
        for g in groups
    ]
    cleaned = [
        pa.table(
            {
                "sample_id": [ids[i] for i in g],
                "texts": [f"text {i}" for i in g],
                "images": _images([[None] for _ in g]),
            }
        )
        for g in groups
    ]
    scored = [
        pa.table(
            {"sample_id": [ids[order[i]] for i in g], "clip_score": [1.0 * order[i] for i in g]}
        )
        for g in groups
    ]
    for asset, tables in ((UNIFIED, unified), (CLEANED, cleaned), (SCORED, scored)):
        _write_groups(storage, asset, tables)
    return ids


def test_located_rows_are_read_from_their_row_groups_alone(tmp_path, monkeypatch) -> None:
    storage = Storage(str(tmp_path))
    ids = _reference_chain(storage, list(range(20)))
    index = PartitionIndex(storage, SCORED, "p")
    assert set(index.indexes) == {SCORED, CLEANED, UNIFIED}  # raw has no partition p
    wanted = ["id16", "id06", "id07"]
    located = index.subset(wanted)
    read: list[tuple[str, int]] = []
    original = pq.ParquetFile.read_row_group

    def counted(self, group, *args, **kwargs):
        read.append((self.metadata.num_rows, group))
        return original(self, group, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    rows = [r for b in read_located_rows(storage, located, wanted) for r in b.to_pylist()]
    assert [r["sample_id"] for r in rows] == wanted
    assert [r["images"][0]["bytes"] for r in rows] == [b"16", b"6", b"7"]
    assert [r["texts"] for r in rows] == ["text 16", "text 6", "text 7"]
    assert {group for _, group in read} == {1, 3}  # in scored, cleaned and unified alike
    expected = read_stage_rows(storage, SCORED, "p", sample_ids=pa.array(wanted))
    assert sorted(rows, key=lambda r: r["sample_id"]) == [
        r for b in expected for r in b.to_pylist()
    ]
    assert len(ids) == 20


@pytest.mark.parametrize("rewritten", [SCORED, UNIFIED])
def test_located_rows_fail_when_storage_changed_since(tmp_path, rewritten) -> None:
    storage = Storage(str(tmp_path))
    _reference_chain(storage, list(range(20)))
    located = PartitionIndex(storage, SCORED, "p").subset(["id16", "id06"])
    table = storage.read_table(rewritten, "p")
    _write_groups(storage, rewritten, [table.take(list(range(19, -1, -1)))])  # other places
    with pytest.raises(LookupError, match=f"{rewritten}.*re-materialized"):
        list(read_located_rows(storage, located, ["id16", "id06"]))
