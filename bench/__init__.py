"""Benchmarks: one module per stage, each with ``run(size) -> list[Measurement]``; the suite
(``python -m bench``) runs them all at two sizes and prints one table."""
