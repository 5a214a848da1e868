"""The judge_calibration asset check in Dagster: raw_clips of one small batch, then the check alone,
with the offline judge and with the OpenAI-compatible judge talking HTTP to a loopback server."""

import re

import dagster as dg
import pytest

from avdag.definitions import defs
from avdag.defs.judging.checks import baseline_judge_calibration, finetuned_judge_calibration
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import write_sample_batch
from avdag.resources.io_managers import ParquetIOManager
from avdag.resources.judge import OfflineJudgeResource, OpenAIJudgeResource
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.openai_stub_server import OpenAIStubServer
from avdag_tests.support.pipeline_helpers import small_resources

BATCH = "batch-calibration"
CHECKS = [baseline_judge_calibration, finetuned_judge_calibration]
# prompts/judge_user.txt puts the two answers between these headings.
_ANSWERS = re.compile(
    r"\*\*\* Human response \*\*\*:\n(.*)\n\n\*\*\* LLM response \*\*\*:\n(.*)\n\nAnswer in", re.DOTALL
)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An instance whose only batch (3 synthetic clips and the real one) has raw_clips materialized."""
    root = tmp_path_factory.mktemp("calibration")
    write_sample_batch(root, BATCH, n_synthetic=3, seed=0)
    resources = small_resources(
        str(root),
        clip_registry=ClipRegistryResource(path=str(root / "_registry.sqlite")),
        parquet_io=ParquetIOManager(base_dir=str(root / "assets")),
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        dg.materialize(
            list(defs.assets),
            selection=["raw_clips", "clip_quarantine"],
            partition_key=BATCH,
            resources=resources,
            instance=instance,
            raise_on_error=True,
        )
        yield instance, resources, root


def _evaluate(ingested, judge, checks=(baseline_judge_calibration,)) -> dict:
    """Run only the calibration check(s); {asset name: evaluation}."""
    instance, resources, _ = ingested
    result = dg.materialize(
        list(defs.assets) + CHECKS,
        selection=dg.AssetSelection.checks(*checks),
        resources={**resources, "judge": judge},
        instance=instance,
        raise_on_error=True,
    )
    assert not result.get_asset_materialization_events()
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def _value(evaluation, key):
    return evaluation.metadata[key].value


def test_offline_judge_passes_on_both_score_assets(ingested):
    evaluations = _evaluate(ingested, OfflineJudgeResource(), checks=CHECKS)
    assert set(evaluations) == {"baseline_judge_scores", "finetuned_judge_scores"}
    for evaluation in evaluations.values():
        assert evaluation.check_name == "judge_calibration" and evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert _value(evaluation, "self_mean") == 5.0
        assert _value(evaluation, "gap") == pytest.approx(
            _value(evaluation, "self_mean") - _value(evaluation, "other_mean")
        )
        assert _value(evaluation, "gap") >= _value(evaluation, "min_gap") == 2.0
        assert _value(evaluation, "sampled_clips") == 4 and _value(evaluation, "failed_items") == 0
        assert _value(evaluation, "judge_id").startswith("offline:") and _value(evaluation, "judge_calls") == 0
        assert "| weather " in _value(evaluation, "by_field")


def _openai_judge(server, tmp_path) -> OpenAIJudgeResource:
    # Few calls in flight: the stub's listen backlog is small, and a refused connection would be a failed item.
    return OpenAIJudgeResource(
        api_key="test",
        model="calibration-test",
        base_url=server.base_url,
        max_retries=0,
        max_in_flight=4,
        cache_path=str(tmp_path / "judge.sqlite"),
    )


def test_a_judge_that_always_says_5_fails_with_gap_0(ingested, tmp_path):
    with OpenAIStubServer(lambda request: "Looks the same. <answer>5</answer>") as server:
        evaluation = _evaluate(ingested, _openai_judge(server, tmp_path))["baseline_judge_scores"]
        assert len(server.requests) == _value(evaluation, "judge_calls") > 0
    assert not evaluation.passed and _value(evaluation, "failed_items") == 0
    assert _value(evaluation, "self_mean") == _value(evaluation, "other_mean") == 5.0
    assert _value(evaluation, "gap") == 0.0
    assert "gap 0.00 < 2.0" in _value(evaluation, "reason")


def _equal_answers_get_5(request) -> str:
    human, model = _ANSWERS.search(request["messages"][-1]["content"]).groups()
    return "<answer>5</answer>" if human == model else "<answer>1</answer>"


def test_a_judge_that_separates_the_answers_passes_and_a_rerun_is_free(ingested, tmp_path):
    with OpenAIStubServer(_equal_answers_get_5) as server:
        first = _evaluate(ingested, _openai_judge(server, tmp_path))["baseline_judge_scores"]
        asked = len(server.requests)
        again = _evaluate(ingested, _openai_judge(server, tmp_path))["baseline_judge_scores"]
        assert len(server.requests) == asked  # every verdict came from the cache
    assert first.passed and again.passed and _value(first, "failed_items") == 0
    assert (_value(first, "self_mean"), _value(first, "other_mean"), _value(first, "gap")) == (5.0, 1.0, 4.0)
    assert asked == _value(first, "judge_calls") > 0
    assert _value(again, "judge_calls") == 0
    assert _value(again, "judge_cache_hits") == _value(again, "judged_items") == _value(first, "judged_items")
    assert _value(again, "gap") == 4.0
