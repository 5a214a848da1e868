"""A candidate the gate refuses is an outcome the CLI reports, not a failure it hides or stops on."""

import dagster as dg
import pytest

from avdag.defs.pipeline.partitions import clip_batches
from avdag.defs.training.promotion import refusal_in_run
from avdag.demo.sample_batch import write_sample_batch
from avdag_tests.support.pipeline_helpers import ALL_ASSETS, small_resources, small_run_config

BATCH = "batch-refused"


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("landing")
    write_sample_batch(root, BATCH, n_synthetic=3, seed=1)
    run_config = small_run_config()
    # A rule no evaluation can meet: the gate must refuse whatever the candidate scores.
    run_config["ops"]["candidate_evaluation"] = {"config": {"min_eval_clips": 10**6}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        result = dg.materialize(
            ALL_ASSETS,
            partition_key=BATCH,
            resources=small_resources(str(root)),
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
        )
        yield result, instance


def test_the_gate_refuses_and_says_why(refused_run):
    result, instance = refused_run
    assert not result.success
    reason = refusal_in_run(instance, result.run_id)
    assert reason is not None and "refused" in reason and "the rule needs 1000000" in reason
    assert instance.fetch_materializations(dg.AssetKey("checkpoint_in_service"), limit=1).records == []


def test_a_run_that_failed_elsewhere_is_not_a_refusal(refused_run, tmp_path):
    _, instance = refused_run
    broken = dg.materialize([dg.asset(name="broken")(lambda: 1 / 0)], instance=instance, raise_on_error=False)
    assert not broken.success and refusal_in_run(instance, broken.run_id) is None
