"""Nightly reprocessing: a run for every batch whose captions are missing or stale.

"Stale" means older than the clips they describe (a re-upload) or, for fine-tuned captions,
older than the checkpoint in service. Unchanged batches are left alone; and within a run only
clips whose (content, model, prompt, settings) changed are recomputed.
"""

import dagster as dg

from avdag.core.ingest.staleness import batches_to_reprocess
from avdag.defs.pipeline.jobs import clip_batch_pipeline
from avdag.defs.pipeline.partitions import clip_batches


def _latest(instance: dg.DagsterInstance, key: str) -> dict[str, int]:
    return dict(
        instance.get_latest_storage_id_by_partition(dg.AssetKey(key), dg.DagsterEventType.ASSET_MATERIALIZATION)
    )


@dg.schedule(job=clip_batch_pipeline, cron_schedule="0 2 * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_reprocess(context: dg.ScheduleEvaluationContext):
    instance = context.instance
    batches = clip_batches.get_partition_keys(dynamic_partitions_store=instance)
    if not batches:
        return dg.SkipReason("no clip batches yet")
    checkpoint = instance.fetch_materializations(dg.AssetKey("checkpoint_in_service"), limit=1).records
    reasons = batches_to_reprocess(
        batches,
        _latest(instance, "raw_clips"),
        _latest(instance, "baseline_captions"),
        _latest(instance, "finetuned_captions"),
        checkpoint[0].storage_id if checkpoint else None,
    )
    if not reasons:
        return dg.SkipReason(f"all {len(batches)} batches are up to date")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(partition_key=b, run_key=f"nightly:{day}:{b}", tags={"avdag/reprocess_reason": why})
        for b, why in sorted(reasons.items())
    ]
