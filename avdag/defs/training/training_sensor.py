"""The training sensor: enough new labelled train clips since the last checkpoint start the training stage."""

import dagster as dg

from avdag.defs.pipeline.instance_reads import has_active_run, latest, latest_by_partition
from avdag.defs.pipeline.jobs import training_pipeline
from avdag.resources.training_trigger import TrainingTriggerResource


def train_clip_counts(instance: dg.DagsterInstance) -> tuple[int, int, int]:
    """(train clips over every batch now, train clips of the newest checkpoint, newest clip_splits storage id)."""
    splits = latest_by_partition(instance, "clip_splits")
    now = sum(int(m.metadata.get("train", 0)) for m in splits.values())
    checkpoint = latest(instance, "sft_checkpoint")
    trained = int(checkpoint.metadata.get("train_clips", 0)) if checkpoint else 0
    return now, trained, max((m.storage_id for m in splits.values()), default=0)


@dg.sensor(job=training_pipeline, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def training_sensor(context: dg.SensorEvaluationContext, training_trigger: TrainingTriggerResource):
    """Requests one training run when `min_new_train_clips` labelled train clips landed since the last
    checkpoint. The run key names the split state it saw, so the same state never trains twice; the
    run queue holds it while another training run is in flight."""
    now, trained, newest_split = train_clip_counts(context.instance)
    new = now - trained
    if new < training_trigger.min_new_train_clips:
        return dg.SkipReason(
            f"{new} new train clips since the last checkpoint; waiting for {training_trigger.min_new_train_clips}"
        )
    if has_active_run(context.instance, training_pipeline.name):
        return dg.SkipReason(f"{new} new train clips; a training run is already queued or running")
    context.log.info(f"{new} new train clips ({now} in all, {trained} in the last checkpoint): requesting training")
    return dg.RunRequest(run_key=f"train:{now}:{newest_split}", tags={"avdag/train_clips": str(now)})
