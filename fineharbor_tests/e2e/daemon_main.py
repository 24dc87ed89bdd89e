"""`dagster-daemon`, unchanged except for a shorter backfill-daemon loop.

Usage: ``python -m fineharbor_tests.e2e.daemon_main SECONDS run -w workspace.yaml``.

The backfill daemon wakes every 30 s (``DEFAULT_DAEMON_INTERVAL_SECONDS``, not configurable in
dagster.yaml), so each backfill waits up to 30 s before its first run and again after its last
one. The end-to-end test runs two backfills and a daemon restart on a 2-core machine within
a few minutes, so it shortens that loop. Were the constant renamed in a later Dagster, setting
it would have no effect and the daemon would simply run stock (slower, still correct).
"""

import sys

import dagster._daemon.controller as controller
from dagster._daemon.cli import main

if __name__ == "__main__":
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = int(sys.argv.pop(1))
    sys.argv[0] = "dagster-daemon"
    sys.exit(main())
