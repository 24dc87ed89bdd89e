"""Ingest: each source's records read (`raw_samples`) and mapped to the unified schema."""

from fineharbor.core.pipeline import RAW, UNIFIED
from fineharbor.defs.factory import per_source_stage

raw_samples = per_source_stage(RAW, record_source_state=True)
unified_samples = per_source_stage(UNIFIED)
