"""Execution of per-source stages: :mod:`.engine` declares a stage's work and maps it over a
partition in process, in a process pool (:mod:`.pool`: crash and time-limit isolation) or on
Ray (:mod:`.ray_engine`); :mod:`.params` is the project file's ``execution:`` section."""
