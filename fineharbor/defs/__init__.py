"""Dagster objects only: assets, checks, sensors, jobs and resource wiring over fineharbor.core."""
