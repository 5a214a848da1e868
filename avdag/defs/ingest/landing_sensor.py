"""The landing sensor: each new ready upload batch becomes a `clip_batches` partition and a run."""

import dagster as dg

from avdag.core.ingest.upload_watch import plan_tick
from avdag.defs.pipeline.jobs import batch_pipeline_job
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.storage import LandingZoneResource

MAX_BATCHES_PER_TICK = 5
RECHECK_PER_TICK = 20


@dg.sensor(job=batch_pipeline_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    """Adds a `clip_batches` partition per new ready batch and requests its run.

    Run keys are `<batch>:<content fingerprint>`: a retried tick, a reset cursor or an
    identical re-upload never runs a batch twice, while changed content runs again.
    """
    plan = plan_tick(landing_zone.zone(), context.cursor, max_launches=MAX_BATCHES_PER_TICK, recheck=RECHECK_PER_TICK)
    if not plan.launch:
        return dg.SensorResult(skip_reason=f"nothing new: {plan.summary()}", cursor=plan.cursor())
    context.log.info(f"launching {[b for b, _ in plan.launch]}; {plan.summary()}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=b, run_key=f"{b}:{fp[:16]}", tags={"avdag/batch_fingerprint": fp})
            for b, fp in plan.launch
        ],
        dynamic_partitions_requests=[clip_batches.build_add_request(plan.new_batches)] if plan.new_batches else [],
        cursor=plan.cursor(),
    )
