"""A batch keeps the eval fraction it was first split at: a later run without the setting (the
nightly schedule, `avdag run`) must not move its clips between train and eval."""

import dagster as dg

from avdag.definitions import defs
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import write_sample_batch
from avdag_tests.support.pipeline_helpers import small_resources

BATCH = "batch-split"


def _split(instance, resources, run_config=None):
    result = dg.materialize(
        list(defs.assets),
        selection=["raw_clips", "clip_quarantine", "clip_splits"],
        partition_key=BATCH,
        resources=resources,
        instance=instance,
        run_config=run_config,
    )
    return result.output_for_node("clip_splits").set_index("clip_id")["split"]


def test_a_batch_split_at_a_fraction_keeps_it_when_run_again_without_one(tmp_path):
    write_sample_batch(tmp_path, BATCH, n_synthetic=12, seed=3)
    resources = small_resources(str(tmp_path))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        first = _split(instance, resources, {"ops": {"clip_splits": {"config": {"eval_fraction": 0.6}}}})
        again = _split(instance, resources)
        record = instance.fetch_materializations(dg.AssetKey("clip_splits"), limit=1).records[0]
    assert (first == "eval").sum() > (first == "train").sum() / 4  # 0.6, clearly not the 10% default
    assert again.equals(first)
    assert record.asset_materialization.metadata["eval_fraction"].value == 0.6
