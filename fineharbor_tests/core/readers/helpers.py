"""Building sources the way users write them, and reading them whole."""

from __future__ import annotations

from fineharbor.core.config import IngestParams, parse_config
from fineharbor.core.readers import ReadStats, read_source


def make_source(tmp_path, **fields):
    fields.setdefault("name", "s")
    fields.setdefault("mapping", {"caption": "txt"})
    return parse_config({"sources": [fields]}, tmp_path).sources[0]


def read_whole(src, params: IngestParams | None = None) -> tuple[list, list, ReadStats]:
    kept, rejected, stats = [], [], ReadStats()
    for k, r in read_source(src, params or IngestParams(), None, None, stats):
        kept += k.to_pylist()
        rejected += r.to_pylist()
    return kept, rejected, stats


def reasons(rejected: list[dict]) -> dict[str, str]:
    return {r["origin_key"]: r["reason"] for r in rejected}
