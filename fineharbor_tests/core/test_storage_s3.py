"""Storage and DuckDB on an S3-compatible object store (moto on loopback)."""

import json
import time

import pyarrow as pa
import pytest

from fineharbor.core.catalog import StageTable, connect, connect_in_memory, s3_secret_sql
from fineharbor.core.schema import REJECT_SCHEMA, reject_row
from fineharbor.core.storage import COMMIT_MARKER, STALE_STAGING_S, Storage
from fineharbor_tests.conftest import s3_keys
from fineharbor_tests.core.test_storage import SCHEMA, table


@pytest.fixture
def s3(s3_bucket):
    bucket, client = s3_bucket
    return Storage(f"s3://{bucket}/pre"), bucket, client


def write(storage, partition, ids, start=0):
    with storage.writer("stage", partition, SCHEMA) as writer:
        writer.write(table(ids, start))
        writer.reject(pa.Table.from_pylist([reject_row(partition, "k", "bad", "x")], REJECT_SCHEMA))


def test_partition_round_trip_publishes_objects_with_a_commit_marker(s3):
    storage, bucket, client = s3
    assert not storage.is_local and storage.uri("data") == f"s3://{bucket}/pre/data"
    write(storage, "a", range(3))
    write(storage, "b", range(3, 5))
    assert storage.partitions("stage") == ["a", "b"]
    assert storage.count_rows("stage", "a") == 3
    assert storage.count_rows("stage", "b", kind="rejects") == 1
    assert storage.read_table("stage", "b").column("sample_id").to_pylist() == ["3", "4"]
    keys = s3_keys(client, bucket)
    assert "pre/data/stage/source=a/part-00000.parquet" in keys
    assert "pre/rejects/stage/source=a/part-00000.parquet" in keys
    marker = client.get_object(Bucket=bucket, Key=f"pre/data/stage/source=a/{COMMIT_MARKER}")
    assert json.loads(marker["Body"].read()) == {"files": ["part-00000.parquet"]}
    assert not [k for k in keys if k.startswith("pre/_staging/")]


def test_rewrite_replaces_every_object_of_the_partition(s3):
    storage, bucket, client = s3
    with storage.writer("stage", "a", SCHEMA, target_file_bytes=1) as writer:
        for i in range(3):
            writer.write(table(range(i * 10, i * 10 + 10)))
    assert len(storage.files("stage", "a")) == 3
    write(storage, "a", range(2), start=100)
    assert storage.files("stage", "a") == [f"{bucket}/pre/data/stage/source=a/part-00000.parquet"]
    assert storage.read_table("stage", "a").column("value").to_pylist() == [100, 101]
    assert [k for k in s3_keys(client, bucket, "pre/data/") if k.endswith(".parquet")] == [
        "pre/data/stage/source=a/part-00000.parquet"
    ]


def test_failed_write_keeps_previous_output_and_leaves_no_staging(s3):
    storage, bucket, client = s3
    write(storage, "a", range(2))
    with pytest.raises(RuntimeError), storage.writer("stage", "a", SCHEMA) as writer:
        writer.write(table(range(10)))
        raise RuntimeError("boom")
    assert storage.count_rows("stage", "a") == 2
    assert not [k for k in s3_keys(client, bucket) if "_staging" in k]


class _FailingCopies:
    """The storage's filesystem, with server-side copies failing after ``allowed`` succeed."""

    def __init__(self, fs, allowed):
        self._fs, self.allowed = fs, allowed

    def copy_file(self, src, dest):
        if self.allowed == 0:
            raise OSError("connection lost mid-publish")
        self.allowed -= 1
        self._fs.copy_file(src, dest)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_interrupted_publish_shows_no_partial_partition(s3):
    storage, bucket, client = s3
    write(storage, "a", range(2))
    real = storage.fs
    storage.fs = _FailingCopies(real, allowed=2)  # rejects, 1 of 3 data files, then a failure
    with (
        pytest.raises(OSError, match="mid-publish"),
        storage.writer("stage", "a", SCHEMA, target_file_bytes=1) as writer,
    ):
        for i in range(3):
            writer.write(table(range(i * 10, i * 10 + 10)))
    storage.fs = real
    # The copied object is there, but without a commit marker no reader sees the partition.
    assert "pre/data/stage/source=a/part-00000.parquet" in s3_keys(client, bucket)
    assert not storage.has_partition("stage", "a")
    assert storage.partitions("stage") == [] and storage.files("stage", "a") == []
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        list(storage.iter_batches("stage", "a"))
    write(storage, "a", range(4))  # the next run publishes over the debris
    assert storage.count_rows("stage", "a") == 4 and len(storage.files("stage", "a")) == 1


def test_objects_without_a_commit_marker_are_not_a_partition(s3):
    storage, bucket, client = s3
    write(storage, "a", range(2))
    body = client.get_object(Bucket=bucket, Key="pre/data/stage/source=a/part-00000.parquet")
    client.put_object(
        Bucket=bucket, Key="pre/data/stage/source=zz/part-00000.parquet", Body=body["Body"].read()
    )
    assert storage.partitions("stage") == ["a"]
    assert not storage.has_partition("stage", "zz")


def test_delete_partition_and_clean_staging(s3):
    storage, bucket, client = s3
    write(storage, "a", range(2))
    write(storage, "b", range(2))
    storage.delete_partition("stage", "a")
    assert storage.partitions("stage") == ["b"]
    assert not [k for k in s3_keys(client, bucket) if "source=a" in k]
    client.put_object(
        Bucket=bucket, Key="pre/_staging/killed-run/data/part-00000.parquet", Body=b""
    )
    # No locks on an object store: a run start removes only what no live write can still own.
    assert storage.clean_staging() == []
    assert s3_keys(client, bucket, "pre/_staging/")
    later = time.time() + STALE_STAGING_S + 60
    assert storage.clean_staging(now=later) == [f"{bucket}/pre/_staging/killed-run"]
    assert not s3_keys(client, bucket, "pre/_staging/")


def test_directory_round_trip_through_object_storage(s3, tmp_path):
    storage, bucket, client = s3
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "weights.pt").write_bytes(b"\x00\x01")
    (tmp_path / "model" / "sub" / "meta.json").write_text("{}")
    storage.put_directory(tmp_path / "model", "models", "m")
    assert s3_keys(client, bucket, "pre/models/") == [
        f"pre/models/m/{COMMIT_MARKER}",
        "pre/models/m/sub/meta.json",
        "pre/models/m/weights.pt",
    ]
    with storage.local_directory("models", "m") as local:
        assert (local / "weights.pt").read_bytes() == b"\x00\x01"
        assert sorted(p.name for p in local.rglob("*")) == ["meta.json", "sub", "weights.pt"]
    with (
        pytest.raises(FileNotFoundError, match="nothing published"),
        storage.local_directory("models", "missing"),
    ):
        pass


def test_duckdb_reads_partition_globs_on_s3(s3):
    storage, _, _ = s3
    write(storage, "a", range(3))
    write(storage, "b", range(3, 5))
    with connect_in_memory(storage, [StageTable("stage")]) as connection:
        rows = connection.execute("select count(*) from stage").fetchall()
        rejects = connection.execute(
            "select source, count(*) from stage_rejects group by 1 order by 1"
        ).fetchall()
    assert rows == [(5,)]
    assert rejects == [("a", 1), ("b", 1)]
    # A connection sees a rewrite made after an earlier query (no stale listing cache).
    with connect(storage) as connection:
        glob = storage.glob("stage")
        query = f"select count(*) from read_parquet('{glob}', hive_partitioning=true)"
        assert connection.execute(query).fetchall() == [(5,)]
        write(storage, "c", range(7))
        assert connection.execute(query).fetchall() == [(12,)]


def test_httpfs_secret_comes_from_the_standard_aws_variables():
    sql = s3_secret_sql(
        {
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "it's",
            "AWS_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        }
    )
    assert sql == (
        "create or replace temporary secret fineharbor_s3 (type s3, key_id 'key', "
        "secret 'it''s', region 'eu-west-1', endpoint '127.0.0.1:9000', use_ssl false, "
        "url_style 'path')"
    )
    assert s3_secret_sql({}) == "create or replace temporary secret fineharbor_s3 (type s3)"
