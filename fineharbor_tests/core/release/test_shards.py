"""Release shards written as tasks: assigned up front, byte-identical on any grouping and on Ray.

The Ray test runs on the loopback cluster of conftest.py's ``ray_address`` (skipped without ray).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from fineharbor.core.distributed.params import ExecutionParams
from fineharbor.core.pipeline import CLEANED, RELEASE, SCORED, UNIFIED
from fineharbor.core.release.build import build_release_mix
from fineharbor.core.release.shards import (
    SourceLayout,
    assign,
    locate,
    storage_order,
    write_shards,
)
from fineharbor.core.release.writer import tar_archive, tar_member
from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor.core.storage import Storage
from fineharbor.core.stored import stored_schema
from fineharbor.defs.resources import STAGE_TABLES
from fineharbor.defs.sql_models import SQL_DIR
from fineharbor.testing.release_input import project, write_input

RECIPE = """
  name: tasks
  version: "1.0"
  seed: 3
  sources: [{name: pairs}, {name: chats}]
  shard_rows: 7
  webdataset: true
  webdataset_shard_rows: 5
"""


@pytest.fixture
def storage(home):
    return Storage(str(home))


def layout(shard_rows: int = 3) -> SourceLayout:
    return SourceLayout(
        source="s",
        asset="a",
        license=None,
        shards=4,
        shard_rows=shard_rows,
        tar_rows=2,
        pairs=False,
        obelics=False,
        include_sample_id=True,
        blur_faces=False,
        signals=(),
    )


def _flat(rows) -> list[tuple[str, str]]:
    return [(partition, i) for partition, ids in rows for i in ids.to_pylist()]


def test_shards_are_assigned_whole_to_tasks_in_storage_order():
    runs = [
        ("p0", pa.array([f"id{i}" for i in range(5)])),
        ("p1", pa.array([f"id{i}" for i in range(5, 11)])),
    ]
    turns = {"id1": [0], "id7": [1, 2]}  # only the rows that lost turns
    tasks = assign(layout(3), runs, turns, 3, task_rows=7)  # two shards of 3 per task
    assert [(t.start, t.first, t.size) for t in tasks] == [(0, 0, 6), (6, 2, 5)]
    assert [r for t in tasks for r in _flat(t.rows)] == _flat(runs)
    assert [len(t.rows) for t in tasks] == [2, 1]  # the first task spans both partitions
    assert [t.turns for t in tasks] == [{"id1": [0]}, {"id7": [1, 2]}]
    # a task holds one shard at least, even when task_rows is below shard_rows
    assert [t.first for t in assign(layout(3), runs, turns, 3, task_rows=2)] == [0, 1, 2, 3]
    assert assign(layout(3), [], {}, 3, task_rows=7) == []


def test_a_task_carries_its_own_rows_only():
    runs = [("p0", pa.array([f"{i:032d}" for i in range(100_000)]))]
    tasks = assign(layout(64), runs, {}, 64, task_rows=1024)
    whole = len(pickle.dumps(runs[0][1]))
    assert len(pickle.dumps(tasks[3])) < whole / 50  # a slice would pickle its whole run


def test_storage_order_follows_the_partitions_and_their_rows(storage):
    schema = pa.schema([pa.field("sample_id", pa.string())])
    for partition, ids in {"p0": ["c", "a", "x"], "p1": ["b", "y", "d"]}.items():
        with storage.writer("ids", partition, schema) as writer:
            writer.write(pa.table({"sample_id": ids}, schema=schema))
    chosen = pa.array(["a", "b", "c", "d"])
    assert _flat(storage_order(storage, "ids", ["p1", "p0"], chosen)) == [
        ("p1", "b"),
        ("p1", "d"),
        ("p0", "c"),
        ("p0", "a"),
    ]


def _release(tmp_path: Path, storage: Storage, execution: ExecutionParams):
    config = project(tmp_path, RECIPE).model_copy(update={"execution": execution})
    result = build_release_mix(config, storage, STAGE_TABLES, SQL_DIR)
    root = Path(storage.path("releases", "tasks", "1.0"))
    digests = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    return result, digests


def test_any_grouping_of_shards_into_tasks_writes_the_same_bytes(tmp_path, storage):
    write_input(storage, n_pairs=150, n_chats=60)
    one, one_files = _release(tmp_path, storage, ExecutionParams())
    many, many_files = _release(tmp_path, storage, ExecutionParams(task_rows=64))
    assert one.extra == {"task_engine": "local", "tasks": 3}  # a shard and a tar task per source
    assert many.extra["tasks"] > one.extra["tasks"]
    assert many_files == one_files  # shards, tars, card and manifest (its file order too)
    assert many.index.equals(one.index)
    shards = [f.path for f in many.files if f.kind == "parquet" and f.source == "pairs"]
    assert shards[0] == "data/pairs/train-00000-of-00022.parquet" and len(shards) == 22
    tars = [f for f in many.files if f.kind == "webdataset"]
    assert [f.rows for f in tars] == [5] * (len(tars) - 1) + [tars[-1].rows]
    pairs = [r for r in many.index.to_pylist() if r["webdataset_shard"]]
    assert sum(f.rows for f in tars) == len(pairs) > 0
    # each pair's index row names the tar that holds its members
    root = Path(storage.path("releases", "tasks", "1.0"))
    held = {}
    for tar in tars:
        with tarfile.open(root / tar.path) as archive:
            held.update((m.name.split(".")[0], tar.path) for m in archive.getmembers())
    assert {r["sample_id"]: r["webdataset_shard"] for r in pairs} == held


def stored_as_references(storage: Storage) -> None:
    """The release input as the pipeline stores it: scored_samples holds ids and scores, its
    rows are in cleaned_samples, whose images point (null bytes) at unified_samples'."""
    for source in ("pairs", "chats", "bench"):
        scored = storage.read_table(SCORED, source)
        own = stored_schema(SCORED, scored.schema).names
        cleaned = scored.select(
            [c for c in scored.schema.names if c == "sample_id" or c not in own]
        )
        references = cleaned.to_pylist()
        for row in references:
            row["images"] = [{**image, "bytes": None} for image in row["images"]]
        for asset, table in (
            (UNIFIED, scored.select(UNIFIED_SCHEMA.names)),
            (CLEANED, pa.Table.from_pylist(references, schema=cleaned.schema)),
            (SCORED, scored.select(own)),
        ):
            with storage.writer(asset, source, table.schema) as writer:
                writer.write(table)


@pytest.mark.slow
def test_a_release_written_in_ray_tasks_is_byte_identical(tmp_path, storage, ray_address):
    write_input(storage, n_pairs=150, n_chats=60)
    _, full_files = _release(tmp_path, storage, ExecutionParams(task_rows=64))
    stored_as_references(storage)
    local, local_files = _release(tmp_path, storage, ExecutionParams(task_rows=64))
    assert local_files == full_files  # workers resolve rows and images by reference
    on_ray = ExecutionParams(engine="ray", address=ray_address, task_rows=64)
    assert RELEASE in on_ray.stages  # on by default, like the other global stages
    ray, ray_files = _release(tmp_path, storage, on_ray)
    assert ray.extra == {"task_engine": "ray", "tasks": local.extra["tasks"]}
    assert ray_files == local_files
    assert ray.index.equals(local.index)


def test_tar_members_built_apart_join_into_the_tar_tarfile_writes():
    members = [
        ("a.jpg", b"\xff\xd8\xff" * 300),
        ("a.txt", b""),
        ("d" * 60 + "/" + "b" * 60 + ".json", b"{}"),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    assert tar_archive([tar_member(n, d) for n, d in members]) == buffer.getvalue()
    assert tar_archive([]) == bytes(tarfile.RECORDSIZE)


def test_a_finished_task_holds_none_of_the_rows_it_read(tmp_path, storage):
    write_input(storage, n_pairs=12, n_chats=0)
    stored_as_references(storage)  # rows read through cleaned_samples and unified_samples
    chosen = pa.array([f"pairs-{i:04d}" for i in range(12)])
    ordered = storage_order(storage, SCORED, ["pairs"], chosen)
    placed = dataclasses.replace(layout(3), asset=SCORED, source="pairs")
    (task,) = locate(storage, assign(placed, ordered, {}, 3, task_rows=64))
    indexes = task.located["pairs"].indexes
    assert set(indexes) == {SCORED, CLEANED, UNIFIED}
    written = write_shards(task, storage, str(tmp_path / "staging"))
    assert written.index.num_rows == 12
    # the driver keeps every task alive until all have run: none may keep its row groups
    assert all(not index.cache and index._open is None for index in indexes.values())


def test_a_task_fails_clearly_when_its_rows_moved_since_they_were_located(tmp_path, storage):
    write_input(storage, n_pairs=12, n_chats=0)
    chosen = pa.array([f"pairs-{i:04d}" for i in range(12)])
    ordered = storage_order(storage, SCORED, ["pairs"], chosen)
    placed = dataclasses.replace(layout(3), asset=SCORED, source="pairs")
    (task,) = locate(storage, assign(placed, ordered, {}, 3, task_rows=64))
    table = storage.read_table(SCORED, "pairs")
    with storage.writer(SCORED, "pairs", table.schema) as writer:
        writer.write(table.take(list(range(table.num_rows - 1, -1, -1))))  # re-materialized
    with pytest.raises(LookupError, match="materialize release_mix again"):
        write_shards(task, storage, str(tmp_path / "staging"))
