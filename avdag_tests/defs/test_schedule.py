"""The nightly schedule asks for exactly the batches whose captions are missing or stale."""

from datetime import UTC, datetime

import dagster as dg

from avdag.core.ingest.staleness import batches_to_reprocess
from avdag.defs.pipeline.partitions import clip_batches
from avdag.defs.pipeline.schedules import nightly_reprocess


def test_staleness_rules():
    reasons = batches_to_reprocess(
        ["new", "no-base", "reuploaded", "no-tuned", "old-ckpt", "fresh"],
        clips_written={"no-base": 1, "reuploaded": 50, "no-tuned": 3, "old-ckpt": 4, "fresh": 5},
        baseline_written={"reuploaded": 10, "no-tuned": 6, "old-ckpt": 7, "fresh": 8},
        finetuned_written={"reuploaded": 11, "old-ckpt": 9, "fresh": 30},
        checkpoint_written=20,
    )
    assert reasons == {
        "new": "never ingested",
        "no-base": "baseline captions missing",
        "reuploaded": "baseline captions older than the clips",
        "no-tuned": "fine-tuned captions missing",
        "old-ckpt": "fine-tuned captions older than the current checkpoint",
    }


def _materialize(instance, key, partition=None):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


def test_schedule_requests_only_stale_batches():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, ["a", "b"])
        for key in ("raw_clips", "baseline_captions", "finetuned_captions"):
            _materialize(instance, key, "a")
        _materialize(instance, "raw_clips", "b")
        # The context opens its own instance from the ref; `with` closes it, so the instance's
        # defs-state context variable is restored here, not later by the garbage collector.
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 11, 25, 2, tzinfo=UTC)
        ) as context:
            requests = nightly_reprocess(context)
            assert [(r.partition_key, r.tags["avdag/reprocess_reason"]) for r in requests] == [
                ("b", "baseline captions missing")
            ]
            assert requests[0].run_key == "nightly:2026-11-25:b"
            _materialize(instance, "raw_clips", "a")  # batch a re-uploaded: its captions are now stale
            for key in ("baseline_captions", "finetuned_captions"):
                _materialize(instance, key, "b")
            requests = nightly_reprocess(context)
            assert [(r.partition_key, r.tags["avdag/reprocess_reason"]) for r in requests] == [
                ("a", "baseline captions older than the clips")
            ]


def test_schedule_skips_when_everything_is_fresh():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, ["a"])
        for key in ("raw_clips", "baseline_captions", "finetuned_captions"):
            _materialize(instance, key, "a")
        with dg.build_schedule_context(instance=instance) as context:
            result = nightly_reprocess(context)
        assert isinstance(result, dg.SkipReason) and "up to date" in result.skip_message
