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
