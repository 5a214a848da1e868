"""Nightly reprocessing: re-run every known batch, so new models or prompts reach old footage.

Re-runs are cheap where nothing changed: captions are cached per (clip, model, prompt,
settings) and an identical checkpoint is reused, so only stale work is redone.
"""

import dagster as dg

from avdag.automation.jobs import batch_pipeline_job
from avdag.automation.partitions import clip_batches


@dg.schedule(job=batch_pipeline_job, cron_schedule="0 2 * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_reprocess(context: dg.ScheduleEvaluationContext):
    batches = clip_batches.get_partition_keys(dynamic_partitions_store=context.instance)
    if not batches:
        return dg.SkipReason("no clip batches yet")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(partition_key=b, run_key=f"nightly:{day}:{b}") for b in batches]
