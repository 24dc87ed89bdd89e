"""Building a source from a config dict and reading all of it, for the reader tests."""

from __future__ import annotations

from fineharbor.core.config import IngestParams, parse_config
from fineharbor.core.readers import read_source


def source(tmp_path, **fields):
    fields.setdefault("name", "s")
    return parse_config({"sources": [fields]}, tmp_path).sources[0]


def read_all(src, params=None):
    kept, rejected = [], []
    for k, r in read_source(src, params or IngestParams()):
        kept += k.to_pylist()
        rejected += r.to_pylist()
    return kept, rejected
