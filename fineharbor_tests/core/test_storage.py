import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from fineharbor.core.schema import REJECT_SCHEMA, reject_row
from fineharbor.core.storage import Storage

SCHEMA = pa.schema([("sample_id", pa.string()), ("value", pa.int64())])


def table(ids, start=0):
    return pa.table(
        {"sample_id": [str(i) for i in ids], "value": list(range(start, start + len(ids)))},
        schema=SCHEMA,
    )


def test_partition_round_trip_with_rejects(tmp_path):
    storage = Storage(str(tmp_path))
    with storage.writer("stage", "src", SCHEMA) as writer:
        writer.write(table(range(3)))
        writer.write(table(range(3, 5)))
        writer.reject(
            pa.Table.from_pylist([reject_row("src", "k", "bad", "x")], schema=REJECT_SCHEMA)
        )
    assert storage.count_rows("stage", "src") == 5
    assert storage.count_rows("stage", "src", kind="rejects") == 1
    assert writer.reason_counts == {"bad": 1}
    assert storage.files("stage", "src")[0].endswith("data/stage/source=src/part-00000.parquet")
    assert storage.read_table("stage", "src").column("sample_id").to_pylist() == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]
    assert storage.partitions("stage") == ["src"]


def test_failed_write_keeps_previous_output_and_leaves_no_staging(tmp_path):
    storage = Storage(str(tmp_path))
    with storage.writer("stage", "src", SCHEMA) as writer:
        writer.write(table(range(2)))
    with pytest.raises(RuntimeError), storage.writer("stage", "src", SCHEMA) as writer:
        writer.write(table(range(10)))
        raise RuntimeError("boom")
    assert storage.count_rows("stage", "src") == 2
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").iterdir())


def test_rewrite_replaces_partition_and_empty_partition_keeps_schema(tmp_path):
    storage = Storage(str(tmp_path))
    with storage.writer("stage", "src", SCHEMA) as writer:
        writer.write(table(range(4)))
    with storage.writer("stage", "src", SCHEMA):
        pass
    assert storage.count_rows("stage", "src") == 0
    assert storage.schema("stage", "src").names == ["sample_id", "value"]


def test_files_roll_over_past_target_size(tmp_path):
    storage = Storage(str(tmp_path))
    with storage.writer("stage", "src", SCHEMA, target_file_bytes=1) as writer:
        for i in range(3):
            writer.write(table(range(i * 10, i * 10 + 10)))
    assert len(storage.files("stage", "src")) == 3
    assert storage.count_rows("stage", "src") == 30


def test_missing_partition_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        list(Storage(str(tmp_path)).iter_batches("stage", "nope"))


def test_kill_during_write_leaves_no_partial_partition(tmp_path):
    """SIGKILL mid-write: the partition is absent (first write) and never half written."""
    script = textwrap.dedent(
        f"""
        import sys, time
        import pyarrow as pa
        from fineharbor.core.storage import Storage
        schema = pa.schema([("sample_id", pa.string()), ("value", pa.int64())])
        storage = Storage({str(tmp_path)!r})
        with storage.writer("stage", "src", schema, target_file_bytes=1) as writer:
            for i in range(10_000):
                writer.write(pa.table({{"sample_id": [str(i)], "value": [i]}}, schema=schema))
                if i == 5:
                    print("writing", flush=True)
                time.sleep(0.01)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    storage = Storage(str(tmp_path))
    assert not storage.has_partition("stage", "src")
    assert any((tmp_path / "_staging").iterdir())  # the debris is only in staging
    storage.clean_staging()
    assert not any((tmp_path / "_staging").iterdir())


KILL_AT_PUBLISH = """
import os, signal, sys
import pyarrow as pa
import pyarrow.fs as pafs
from fineharbor.core.storage import Storage

point = sys.argv[2]


class Dying(pafs.LocalFileSystem):
    def move(self, source, target):
        if point == "between_renames" and "/_staging/" in source and source.endswith("/data"):
            os.kill(os.getpid(), signal.SIGKILL)
        super().move(source, target)


class DyingStorage(Storage):
    def _delete_dir(self, path):
        if point == "before_removing_retired" and path.endswith("retired-data"):
            os.kill(os.getpid(), signal.SIGKILL)
        super()._delete_dir(path)


schema = pa.schema([("sample_id", pa.string()), ("value", pa.int64())])
storage = DyingStorage(sys.argv[1])
storage.fs = Dying()
with storage.writer("stage", "src", schema) as writer:
    writer.write(pa.table({"sample_id": [str(i) for i in range(400)], "value": list(range(400))}))
"""


@pytest.mark.parametrize(
    ("point", "live_rows"),
    # the old output is retired, the new one published, the process dies before deleting the
    # old one; or it dies between the two renames: the partition is absent until the rerun
    [("before_removing_retired", 400), ("between_renames", None)],
)
def test_kill_at_publish_leaves_nothing_a_glob_reads_and_the_next_run_start_cleans(
    tmp_path, point, live_rows
):
    import dagster as dg

    from fineharbor.core.catalog import StageTable, connect_in_memory
    from fineharbor.defs.resources import FineharborProject

    storage = Storage(str(tmp_path))
    with storage.writer("stage", "src", SCHEMA) as writer:
        writer.write(table(range(300)))
    with storage.writer("stage", "other", SCHEMA) as writer:
        writer.write(table(range(300, 310)))
    killed = subprocess.run([sys.executable, "-c", KILL_AT_PUBLISH, str(tmp_path), point])
    assert killed.returncode == -signal.SIGKILL

    debris = list((tmp_path / "_staging").rglob("*.parquet"))
    assert debris, "the kill left the retired or staged output behind"
    assert not [p for p in (tmp_path / "data").rglob("*") if "retired" in p.name]
    assert storage.partitions("stage") == (["other", "src"] if live_rows else ["other"])
    assert storage.count_rows("stage", "src") == (live_rows or 0)
    # What users query: the catalog views and globs count live rows only (no 300 + 400).
    with connect_in_memory(storage, [StageTable("stage")]) as connection:
        view = connection.execute("select count(*) from stage").fetchone()[0]
        glob = connection.execute(
            "select count(*) from read_parquet(?)", [storage.glob("stage")]
        ).fetchone()[0]
    assert view == glob == (live_rows or 0) + 10

    # The next run start (the project resource's setup) removes the dead run's leftovers.
    @dg.asset
    def probe(project: FineharborProject) -> None:
        pass

    project = FineharborProject(home=str(tmp_path), state=str(tmp_path / "state"))
    assert dg.materialize([probe], resources={"project": project}).success
    assert not list((tmp_path / "_staging").iterdir())
    assert storage.count_rows("stage", "other") == 10


LIVE_WRITER = """
import sys
import pyarrow as pa
from fineharbor.core.storage import Storage

schema = pa.schema([("sample_id", pa.string()), ("value", pa.int64())])
with Storage(sys.argv[1]).writer("stage", "src", schema) as writer:
    writer.write(pa.table({"sample_id": ["a", "b"], "value": [1, 2]}, schema=schema))
    print("staged", flush=True)
    sys.stdin.readline()
"""


def test_clean_staging_keeps_a_live_concurrent_write(tmp_path):
    """Another process mid-write (its staging holds rows, its lock is held): a run start
    removes a dead write's leftovers beside it and leaves the live one to publish."""
    storage = Storage(str(tmp_path))
    dead = tmp_path / "_staging" / "stage-dead-0123" / "data"
    dead.mkdir(parents=True)
    (dead / "part-00000.parquet").write_bytes(b"debris of a killed run")
    live = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout.readline().strip() == "staged"
        removed = storage.clean_staging()
        assert removed == [storage.path("_staging", "stage-dead-0123")]
        assert len(list((tmp_path / "_staging").rglob("*.parquet"))) == 1  # the live one's
        live.stdin.write("go\n")
        live.stdin.flush()
        assert live.wait(timeout=60) == 0
    finally:
        live.kill()
    assert storage.read_table("stage", "src").column("value").to_pylist() == [1, 2]
    assert not list((tmp_path / "_staging").iterdir())


def test_run_start_removes_retired_outputs_earlier_versions_left_beside_partitions(tmp_path):
    storage = Storage(str(tmp_path))
    with storage.writer("stage", "src", SCHEMA) as writer:
        writer.write(table(range(3)))
    legacy = [
        tmp_path / "data" / "stage" / f"source=src.retired-{'a' * 32}",
        tmp_path / "rejects" / "stage" / f"source=src.retired-{'b' * 32}",
        tmp_path / "data" / f"global.retired-{'c' * 32}",
    ]
    for directory in legacy:
        directory.mkdir(parents=True)
        (directory / "part-00000.parquet").write_bytes(b"old rows")
    lookalike = tmp_path / "data" / "stage" / "source=src.retired-notahash"
    lookalike.mkdir()
    assert sorted(storage.clean_staging()) == sorted(str(d) for d in legacy)
    assert not any(d.exists() for d in legacy) and lookalike.exists()
    assert storage.count_rows("stage", "src") == 3
