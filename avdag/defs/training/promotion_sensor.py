"""The promotion sensor: once a checkpoint is in service, every batch gets fine-tuned captions and scores from it."""

import dagster as dg

from avdag.defs.pipeline.instance_reads import active_partitions, latest, latest_by_partition
from avdag.defs.pipeline.jobs import FINETUNED_ASSETS, clip_batch_pipeline

MAX_RUNS_PER_TICK = 20


def batches_behind(instance: dg.DagsterInstance) -> tuple[str | None, str | None, list[str]]:
    """(checkpoint id, weights hash in service, batches whose fine-tuned scores come from another model)."""
    service = latest(instance, "checkpoint_in_service")
    if service is None:
        return None, None, []
    weights = service.metadata.get("weights_hash")
    baseline = latest_by_partition(instance, "baseline_judge_scores")
    finetuned = latest_by_partition(instance, "finetuned_judge_scores")
    behind = sorted(
        batch for batch in baseline if batch not in finetuned or finetuned[batch].metadata.get("model_hash") != weights
    )
    return service.metadata.get("checkpoint_id"), weights, behind


@dg.sensor(job=clip_batch_pipeline, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def promotion_sensor(context: dg.SensorEvaluationContext):
    """Requests fine-tuned captions and scores for each batch not yet scored with the checkpoint in
    service (after a promotion: all of them). Batches with a run in flight wait for the next tick."""
    checkpoint_id, _, behind = batches_behind(context.instance)
    if checkpoint_id is None:
        return dg.SkipReason("no checkpoint in service yet")
    busy = active_partitions(context.instance, clip_batch_pipeline.name)
    ready = [batch for batch in behind if batch not in busy][:MAX_RUNS_PER_TICK]
    if not ready:
        return dg.SkipReason(
            f"every batch is scored with {checkpoint_id}" if not behind else f"{len(behind)} batches busy"
        )
    context.log.info(f"re-captioning {len(ready)} batches with {checkpoint_id}: {ready}")
    return [
        dg.RunRequest(
            partition_key=batch,
            run_key=f"finetuned:{checkpoint_id}:{batch}",
            asset_selection=[dg.AssetKey(name) for name in FINETUNED_ASSETS],
            tags={"avdag/checkpoint_id": checkpoint_id},
        )
        for batch in ready
    ]
