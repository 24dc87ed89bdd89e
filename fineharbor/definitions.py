"""What `dagster dev -w workspace.yaml` loads: every fineharbor asset, check, job and sensor."""

import dagster as dg

from fineharbor.defs.automation import stale_partitions_schedule, with_config_versions
from fineharbor.defs.jobs import ASSETS, JOBS
from fineharbor.defs.quality import QualityModelsResource
from fineharbor.defs.resources import EmbedderResource, FineharborProject, WorkerPoolsResource
from fineharbor.defs.sensors import source_sensor

# Stage parameters in the code versions, and the stale-partition schedule (defs/automation.py).
defs = with_config_versions(
    dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        schedules=[stale_partitions_schedule],
        sensors=[source_sensor],
        resources={
            "project": FineharborProject(),
            "embedder": EmbedderResource(),
            "pools": WorkerPoolsResource(),
            "models": QualityModelsResource(),
        },
    )
)
