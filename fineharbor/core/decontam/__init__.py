"""Test-set decontamination: train samples matching a declared benchmark are removed."""
