"""The landing sensor: each new ready upload batch becomes a `clip_batches` partition and a run."""

import dagster as dg

from avdag.core.ingest.upload_watch import plan_tick
from avdag.defs.pipeline.jobs import clip_batch_pipeline
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.storage import LandingZoneResource

MAX_BATCHES_PER_TICK = 5
RECHECK_PER_TICK = 20


FINGERPRINT_TAG = "avdag/batch_fingerprint"


def already_launched(instance: dg.DagsterInstance, batch: str, fingerprint: str) -> bool:
    """Whether any run (the sensor's, the schedule's, `avdag demo`/`avdag run`) processed this content.

    The Dagster instance is the one record every launcher shares: each batch run is tagged with
    its partition and content fingerprint, so a sensor switched on after the demo launches only
    what is new. A run that failed or was cancelled does not count.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={"dagster/partition": batch, FINGERPRINT_TAG: fingerprint}), limit=5
    )
    return any(r.dagster_run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED) for r in records)


@dg.sensor(job=clip_batch_pipeline, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    """Adds a `clip_batches` partition per new ready batch and requests its run.

    Run keys are `<batch>:<content fingerprint>`: a retried tick, a reset cursor or an
    identical re-upload never runs a batch twice, while changed content runs again. Content some
    other launcher already processed (the demo) is recorded as seen and not launched.
    """
    plan = plan_tick(landing_zone.zone(), context.cursor, max_launches=MAX_BATCHES_PER_TICK, recheck=RECHECK_PER_TICK)
    launch = [(b, fp) for b, fp in plan.launch if not already_launched(context.instance, b, fp)]
    done_elsewhere = sorted({b for b, _ in plan.launch} - {b for b, _ in launch})
    new_partitions = [b for b in plan.new_batches if not context.instance.has_dynamic_partition(clip_batches.name, b)]
    if done_elsewhere:
        context.log.info(f"already processed by another run: {done_elsewhere}")
    if not launch:
        return dg.SensorResult(
            skip_reason=f"nothing new: {plan.summary()}"
            + (f"; done elsewhere: {done_elsewhere}" if done_elsewhere else ""),
            cursor=plan.cursor(),
        )
    context.log.info(f"launching {[b for b, _ in launch]}; {plan.summary()}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=b, run_key=f"{b}:{fp[:16]}", tags={FINGERPRINT_TAG: fp}) for b, fp in launch
        ],
        dynamic_partitions_requests=[clip_batches.build_add_request(new_partitions)] if new_partitions else [],
        cursor=plan.cursor(),
    )
