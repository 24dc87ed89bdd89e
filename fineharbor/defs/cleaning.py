"""Cleaning: every sample's images decoded and checked, its texts filtered (`cleaned_samples`)."""

from fineharbor.core.pipeline import CLEANED
from fineharbor.defs.factory import per_source_stage
from fineharbor.defs.reporting import cleaned_distributions

cleaned_samples = per_source_stage(CLEANED, plots=cleaned_distributions, review_page=True)
