"""The upload sensor: a new batch folder in the landing zone becomes a partition and a run."""

import json

import dagster as dg

from avdag.automation.jobs import batch_pipeline_job
from avdag.automation.partitions import clip_batches
from avdag.resources.storage import LandingZoneResource

MAX_BATCHES_PER_TICK = 5


@dg.sensor(job=batch_pipeline_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    """Adds one `clip_batches` partition per new batch folder and requests its pipeline run.

    The cursor remembers the batches already launched; run keys are the batch names, so a
    retried tick never launches the same batch twice. At most MAX_BATCHES_PER_TICK per tick.
    """
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    new = [b for b in landing_zone.zone().list_batches() if b not in seen]
    if not new:
        return dg.SkipReason(f"no new batch folders ({len(seen)} already seen)")
    launch = new[:MAX_BATCHES_PER_TICK]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=b, run_key=f"batch:{b}") for b in launch],
        dynamic_partitions_requests=[clip_batches.build_add_request(launch)],
        cursor=json.dumps(sorted(seen | set(launch))),
    )
