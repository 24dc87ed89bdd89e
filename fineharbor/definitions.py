"""What `dagster dev -w workspace.yaml` loads: every fineharbor asset, check, job and sensor."""

import dagster as dg

from fineharbor.defs.automation import stale_partitions_schedule, with_config_versions
from fineharbor.defs.jobs import ASSETS, JOBS, stage_resources
from fineharbor.defs.sensors import source_sensor

# Stage parameters in the code versions, and the stale-partition schedule (defs/automation.py).
defs = with_config_versions(
    dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        schedules=[stale_partitions_schedule],
        sensors=[source_sensor],
        resources=stage_resources(),
    )
)
