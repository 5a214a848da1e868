"""The training, promotion and reports sensors, each evaluated against an instance seeded with the
materializations a real run records (the daemon test runs them for real)."""

import dagster as dg

from avdag.defs.pipeline.jobs import FINETUNED_ASSETS
from avdag.defs.pipeline.partitions import clip_batches
from avdag.defs.reporting.reports_sensor import reports_sensor
from avdag.defs.training.promotion_sensor import promotion_sensor
from avdag.defs.training.training_sensor import training_sensor
from avdag.resources.training_trigger import TrainingTriggerResource


def _record(instance, asset, partition=None, **metadata):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=asset, partition=partition, metadata=metadata)
    )


def _training_tick(instance, threshold):
    context = dg.build_sensor_context(
        instance=instance, resources={"training_trigger": TrainingTriggerResource(min_new_train_clips=threshold)}
    )
    return training_sensor(context)


def test_training_starts_once_enough_new_train_clips_landed():
    with dg.instance_for_test() as instance:
        _record(instance, "clip_splits", "b1", train=4, eval=1)
        assert isinstance(_training_tick(instance, threshold=5), dg.SkipReason)
        _record(instance, "clip_splits", "b2", train=3, eval=0)
        request = _training_tick(instance, threshold=5)
        assert isinstance(request, dg.RunRequest) and request.run_key.startswith("train:7:")
        _record(instance, "sft_checkpoint", checkpoint_id="c1", train_clips=7)
        assert "0 new train clips" in _training_tick(instance, threshold=5).skip_message
        _record(instance, "clip_splits", "b1", train=9, eval=1)  # a re-upload of b1 with more clips
        assert _training_tick(instance, threshold=5).run_key.startswith("train:12:")


def _seed_scored_batches(instance, finetuned_hash_by_batch):
    instance.add_dynamic_partitions(clip_batches.name, list(finetuned_hash_by_batch))
    for batch, model_hash in finetuned_hash_by_batch.items():
        _record(instance, "baseline_judge_scores", batch, model_hash="base")
        if model_hash:
            _record(instance, "finetuned_judge_scores", batch, model_hash=model_hash)


def test_promotion_recaptions_exactly_the_batches_behind_the_checkpoint_in_service():
    with dg.instance_for_test() as instance:
        _seed_scored_batches(instance, {"b1": "old", "b2": None, "b3": "new"})
        assert "no checkpoint in service" in promotion_sensor(dg.build_sensor_context(instance=instance)).skip_message
        _record(instance, "checkpoint_in_service", checkpoint_id="c2", weights_hash="new", path="/x")
        requests = promotion_sensor(dg.build_sensor_context(instance=instance))
        assert [(r.partition_key, r.run_key) for r in requests] == [
            ("b1", "finetuned:c2:b1"),
            ("b2", "finetuned:c2:b2"),
        ]
        assert all(r.asset_selection == [dg.AssetKey(a) for a in FINETUNED_ASSETS] for r in requests)


def test_reports_wait_until_no_batch_lags_then_run_once_per_change():
    with dg.instance_for_test() as instance:
        _seed_scored_batches(instance, {"b1": "new", "b2": "old"})
        _record(instance, "checkpoint_in_service", checkpoint_id="c2", weights_hash="new", path="/x")
        assert "1 batches not yet scored" in reports_sensor(dg.build_sensor_context(instance=instance)).skip_message
        _record(instance, "finetuned_judge_scores", "b2", model_hash="new")
        request = reports_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(request, dg.RunRequest) and request.run_key.startswith("report:c2:")
        _record(instance, "score_comparison", checkpoint_in_service="c2")
        assert "up to date" in reports_sensor(dg.build_sensor_context(instance=instance)).skip_message
