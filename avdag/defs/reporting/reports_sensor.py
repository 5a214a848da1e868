"""The reports sensor: once every batch is scored with the checkpoint in service, refresh the chart and catalog."""

import dagster as dg

from avdag.defs.pipeline.instance_reads import has_active_run, latest, latest_by_partition
from avdag.defs.pipeline.jobs import clip_batch_pipeline, reporting_pipeline
from avdag.defs.training.promotion_sensor import batches_behind


@dg.sensor(job=reporting_pipeline, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def reports_sensor(context: dg.SensorEvaluationContext):
    """Requests `score_comparison` and `clip_catalog` when scores changed since the last report and no
    batch lags behind the checkpoint in service (so a report never mixes two checkpoints)."""
    instance = context.instance
    checkpoint_id, _, behind = batches_behind(instance)
    if checkpoint_id is None:
        return dg.SkipReason("no checkpoint in service yet")
    if behind:
        return dg.SkipReason(f"{len(behind)} batches not yet scored with {checkpoint_id}")
    if has_active_run(instance, clip_batch_pipeline.name):
        return dg.SkipReason("clip batch runs in flight")
    newest = max(
        (
            m.storage_id
            for asset in ("baseline_judge_scores", "finetuned_judge_scores", "baseline_captions")
            for m in latest_by_partition(instance, asset).values()
        ),
        default=0,
    )
    report = latest(instance, "score_comparison")
    if report is not None and report.storage_id > newest:
        return dg.SkipReason("the report is up to date")
    return dg.RunRequest(run_key=f"report:{checkpoint_id}:{newest}")
