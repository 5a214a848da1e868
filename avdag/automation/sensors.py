"""Sensors: new uploads become partitions and pipeline runs; ended judge batches become scoring runs."""

import dagster as dg

from avdag.automation.jobs import batch_pipeline_job
from avdag.automation.partitions import clip_batches
from avdag.automation.versions import JUDGE_ASSETS
from avdag.core.judge_batch_ledger import runs_to_request
from avdag.core.upload_watch import plan_tick
from avdag.resources.judge import JudgeResource
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
        run_requests=[dg.RunRequest(partition_key=b, run_key=f"{b}:{fp[:16]}", tags={"avdag/batch_fingerprint": fp})
                      for b, fp in plan.launch],
        dynamic_partitions_requests=[clip_batches.build_add_request(plan.new_batches)] if plan.new_batches else [],
        cursor=plan.cursor(),
    )


@dg.sensor(
    target=dg.AssetSelection.assets(*JUDGE_ASSETS, "score_comparison"),
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def judge_batch_sensor(context: dg.SensorEvaluationContext, judge: JudgeResource):
    """Polls the judge's Batch API submissions; when one ends, re-runs the scoring that waits for it.

    The comparison joins the run once no submission is still running, so it never compares a
    fresh side with a stale one. Does nothing for a judge that answers live.
    """
    tracker = judge.batch_tracker()
    if tracker is None:
        return dg.SkipReason("the judge answers live: no Batch API submissions to watch")
    ended, running = tracker.poll()
    waiting = "; ".join(submission.progress() for submission in running) or "none"
    if not ended:
        return dg.SkipReason(f"{len(running)} judge batch submissions still running: {waiting}")
    context.log.info(f"{len(ended)} judge batch submissions ended; still running: {waiting}")
    compare = [] if running else ["score_comparison"]
    return [
        dg.RunRequest(run_key=run_key, partition_key=partition or None,
                      asset_selection=[dg.AssetKey(name) for name in assets + compare])
        for partition, (assets, run_key) in runs_to_request(ended).items()
    ]
