"""Distributed execution of per-source stages: :mod:`.engine` maps a stage's batch work over a
partition in process or on Ray; :mod:`.params` is the project file's ``execution:`` section."""
