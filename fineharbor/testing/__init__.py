"""Synthetic data and tiny models shared by the tests and `bench/` (never by the pipeline).

Each module builds one kind of realistic input, so tests and benchmarks exercise real-world
shapes (every format Pillow writes, broken and hostile files, transformed copies) rather than
only what the demo generator plants.
"""
