"""Stage inputs written as the pipeline writes them (each byte stored once, core/stored.py)."""

from __future__ import annotations

import pyarrow as pa

from fineharbor.core.pipeline import BY_NAME
from fineharbor.core.storage import Storage


def write_kept_rows(storage: Storage, asset: str, partition: str, rows: pa.Table) -> None:
    """``rows`` (full rows of the stage ``asset`` keeps) as the pipeline holds them: the rows in
    its ``rows_of`` stage (``cleaned_samples``), their ``sample_id`` in ``asset``."""
    base = BY_NAME[asset].rows_of
    assert base is not None, f"{asset} stores its rows itself"
    with storage.writer(base, partition, rows.schema) as writer:
        writer.write(rows)
    ids = rows.select(["sample_id"])
    with storage.writer(asset, partition, ids.schema) as writer:
        writer.write(ids)
