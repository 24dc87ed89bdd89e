"""The source sensor: configured sources become partitions, and new or changed ones get runs."""

import json

import dagster as dg

from fineharbor.core.config import ConfigError
from fineharbor.core.readers import source_state
from fineharbor.defs.jobs import JOBS
from fineharbor.defs.partitions import source_partitions
from fineharbor.defs.resources import FineharborProject


@dg.sensor(
    job=JOBS[0],  # the pipeline's first job: ingest, clean and sign the source
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Watches fineharbor.yaml and each source's location. Adds a `source` partition for every "
        "configured source (one per shard of a sharded source) and requests a per-source run "
        "when a source is new, its config changed, or files in its location changed."
    ),
)
def source_sensor(context: dg.SensorEvaluationContext, project: FineharborProject):
    try:
        config = project.config
    except ConfigError as error:
        return dg.SkipReason(f"project file is invalid, nothing requested:\n{error}")
    previous = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(source_partitions.name))
    current = {key: source_state(source) for source in config.sources for key in source.partitions}
    new_partitions = [name for name in current if name not in existing]
    changed = [name for name, state in current.items() if previous.get(name) != state]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{name}:{current[name]}",
                partition_key=name,
                tags={"fineharbor/trigger": "new" if name not in previous else "changed"},
            )
            for name in changed
        ],
        dynamic_partitions_requests=(
            [source_partitions.build_add_request(new_partitions)] if new_partitions else []
        ),
        cursor=json.dumps(current, sort_keys=True),
    )
