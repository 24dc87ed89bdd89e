"""DuckDB as the SQL face: views over the Parquet outputs of every stage and their rejects.

Statistics and ad-hoc queries run on in-memory connections. One writer (the catalog asset,
under a file lock) refreshes ``catalog.duckdb`` so users can open it with the duckdb CLI.

Every connection goes through :func:`configure` (:func:`connect` opens and configures one;
Dagster assets open theirs with dagster-duckdb's ``DuckDBResource``), which makes the storage's
URIs readable: local paths as they are; object storage (``s3://``) through DuckDB's ``httpfs``
extension when it is installed (a temporary secret from the ``AWS_*`` environment variables),
else through an fsspec filesystem (``s3fs``) registered on the connection. The catalog file
holds views only: opening it on another machine needs the same access (``load httpfs`` and an
S3 secret in the duckdb CLI when the views point at ``s3://``).

A stage that stores its rows by reference (:mod:`fineharbor.core.stored`) gets a view that
resolves them the way :func:`fineharbor.core.stored.read_stage_rows` does (:func:`rows_sql`):
its rows are what they were when every stage held a full copy.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
from filelock import FileLock

from fineharbor.core.pipeline import BY_NAME
from fineharbor.core.storage import DATA, REJECTS, Storage


@dataclass(frozen=True)
class StageTable:
    asset: str
    partitioned: bool = True


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parquet_sql(storage: Storage, asset: str, files: list[str] | None = None) -> str:
    """``read_parquet`` of a stage's own files (``files``, default every partition's)."""
    stage = BY_NAME.get(asset)
    if files is None:
        where = _quote(storage.glob(asset, stage is None or stage.per_source))
    else:
        where = "[" + ", ".join(_quote(storage.to_uri(f)) for f in files) + "]"
    # Rows carry their `source` column; a `source=<partition>` directory would override it
    # with a shard's partition key (`laion.shard-003`), so the directories stay out.
    return f"read_parquet({where}, hive_partitioning=false, union_by_name=true)"


def _stored_names(storage: Storage, asset: str) -> list[str]:
    partitions = storage.partitions(asset)
    return storage.schema(asset, partitions[0] if partitions else None).names


def _holds_rows(storage: Storage, asset: str) -> bool:
    from fineharbor.core.stored import holds_rows  # imports the schemas' modules

    partitions = storage.partitions(asset)
    return holds_rows(asset, storage.schema(asset, partitions[0] if partitions else None))


def rows_sql(
    storage: Storage, asset: str, files: list[str] | None = None, *, with_bytes: bool = True
) -> str:
    """A relation of ``asset``'s rows as readers see them (references resolved): its own
    files (``files``, default all) joined on ``sample_id`` with what they reference.
    ``with_bytes=False``: images as stored (null bytes where referenced), reading no image
    upstream: enough for what does not look at bytes (counts, previews)."""
    own = parquet_sql(storage, asset, files)
    stage = BY_NAME.get(asset)
    if (
        stage is not None
        and stage.rows_of is not None
        and storage.partitions(stage.rows_of)
        and not _holds_rows(storage, asset)
    ):
        base = _stored_names(storage, stage.rows_of)
        added = "".join(f', d."{c}"' for c in _stored_names(storage, asset) if c not in base)
        base_rows = rows_sql(storage, stage.rows_of, with_bytes=with_bytes)
        return f"(select b.*{added} from {own} d join {base_rows} b on b.sample_id = d.sample_id)"
    if stage is not None and stage.images_of is not None and with_bytes:
        if not storage.partitions(stage.images_of):
            return own  # nothing upstream to resolve against (images written in full)
        image = (
            "{'bytes': coalesce(s.images[i].bytes, u.images[i].bytes), 'path': s.images[i].path}"
        )
        images = f"list_transform(range(1, len(s.images) + 1), lambda i: {image})"
        upstream = rows_sql(storage, stage.images_of)
        return (
            f"(select s.* replace (case when s.images is null then null else {images} end "
            f"as images) from {own} s left join (select sample_id, images from {upstream}) u "
            "on u.sample_id = s.sample_id)"
        )
    return own


def view_statements(
    storage: Storage, stages: Iterable[StageTable], only: Iterable[str] | None = None
) -> dict[str, str]:
    """`create view` SQL for every stage (and its rejects) that has output; ``only``: just
    these view names (creating a view reads its files' footers: costly on object storage)."""
    wanted = None if only is None else set(only)
    statements = {}
    for stage in stages:
        for kind, view in ((DATA, stage.asset), (REJECTS, f"{stage.asset}_rejects")):
            if wanted is not None and view not in wanted:
                continue
            # A published partition always holds a file (an empty one still has its schema).
            present = (
                bool(storage.partitions(stage.asset, kind))
                if stage.partitioned
                else storage.has_partition(stage.asset, None, kind)
            )
            if not present:
                continue
            if kind == DATA and stage.asset in BY_NAME:
                relation = rows_sql(storage, stage.asset)
            else:
                glob = storage.glob(stage.asset, stage.partitioned, kind)
                # Rows carry their `source` column; a `source=<partition>` directory would
                # override it with a shard's key (`laion.shard-003`): directories stay out.
                relation = (
                    f"read_parquet({_quote(glob)}, hive_partitioning=false, union_by_name=true)"
                )
            statements[view] = f"create or replace view {view} as select * from {relation}"
    return statements


def s3_secret_sql(environ: dict[str, str] | None = None) -> str:
    """``create secret`` for httpfs from the variables boto3 and pyarrow read too:
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION (or
    AWS_DEFAULT_REGION), AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) for MinIO and the like."""
    env = os.environ if environ is None else environ
    options = ["type s3"]
    for option, name in (
        ("key_id", "AWS_ACCESS_KEY_ID"),
        ("secret", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "AWS_SESSION_TOKEN"),
    ):
        if env.get(name):
            options.append(f"{option} {_quote(env[name])}")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options.append(f"region {_quote(region)}")
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlsplit(endpoint)
        options += [
            f"endpoint {_quote(url.netloc)}",
            f"use_ssl {'true' if url.scheme == 'https' else 'false'}",
            "url_style 'path'",
        ]
    return f"create or replace temporary secret fineharbor_s3 ({', '.join(options)})"


def _fsspec_filesystem(storage: Storage):
    if storage.scheme not in ("s3", "s3a"):
        raise ValueError(f"no DuckDB access to {storage.root}: only s3:// object storage is known")
    import s3fs

    # fsspec reuses one instance (and its connection pool) per process; no listing cache, as
    # stages rewrite partitions between the queries of one process.
    return s3fs.S3FileSystem(use_listings_cache=False)


@functools.cache
def _httpfs_installed() -> bool:
    with duckdb.connect() as probe:
        try:
            probe.execute("load httpfs")
        except duckdb.Error:
            return False
    return True


def configure(connection: duckdb.DuckDBPyConnection, storage: Storage) -> duckdb.DuckDBPyConnection:
    """Make an open connection read the storage's URIs (see the module docstring)."""
    if storage.is_local:
        return connection
    if _httpfs_installed():
        connection.execute("load httpfs")
        connection.execute(s3_secret_sql())
    else:
        connection.register_filesystem(_fsspec_filesystem(storage))
    return connection


def connect(storage: Storage, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads the storage's URIs (see the module docstring)."""
    return configure(duckdb.connect(database), storage)


def create_views(
    connection: duckdb.DuckDBPyConnection,
    storage: Storage,
    stages: Iterable[StageTable],
    only: Iterable[str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A view per stage output on a configured connection (``only``: just these views)."""
    for statement in view_statements(storage, stages, only).values():
        connection.execute(statement)
    return connection


def connect_in_memory(
    storage: Storage, stages: Iterable[StageTable], only: Iterable[str] | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with a view per stage output (``only``: just these views)."""
    return create_views(connect(storage), storage, stages, only)


def refresh_catalog(
    storage: Storage,
    path: Path,
    stages: Iterable[StageTable],
    open_database: Callable[[str], AbstractContextManager[duckdb.DuckDBPyConnection]] = (
        duckdb.connect
    ),
) -> list[str]:
    """Rebuild the catalog file's views; returns the view names. Views only: no data copied.
    ``open_database``: how the file is opened (the catalog asset passes DuckDBResource's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    statements = view_statements(storage, stages)
    with FileLock(f"{path}.lock"), open_database(str(path)) as connection:
        configure(connection, storage)
        stale = connection.execute(
            "select view_name from duckdb_views() where not internal and schema_name = 'main'"
        ).fetchall()
        for (name,) in stale:
            if name not in statements:
                connection.execute(f'drop view "{name}"')
        for statement in statements.values():
            connection.execute(statement)
    return sorted(statements)
