"""The judge_calibration asset and its blocking check in Dagster: raw_clips of one small batch, then the
calibration alone with a stand-in for the comparison downstream of it. The offline judge passes and the
stand-in runs; a judge that always says 5, or scores by answer length, fails and the stand-in never runs."""

import dagster as dg
import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.judging.judges import JudgeVerdict
from avdag.definitions import defs
from avdag.defs.judging.judge_calibration import judge_calibration, judge_separates_answers
from avdag.defs.pipeline.jobs import REPORTING_ASSETS
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import write_sample_batch
from avdag.resources.io_managers import JsonIOManager, ParquetIOManager
from avdag.resources.judge import JudgeResource, OfflineJudgeResource, OpenAIJudgeResource
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.openai_stub_server import OpenAIStubServer
from avdag_tests.support.pipeline_helpers import small_resources

BATCH = "batch-calibration"
RECORD_KEYS = {
    "passed",
    "reason",
    "judge_id",
    "thresholds",
    "means",
    "by_field",
    "missed_fields",
    "skipped_fields",
    "labelled_clips",
    "sampled_clips",
    "judged_items",
    "failed_items",
    "judge_calls",
    "judge_cache_hits",
}


@dg.asset(io_manager_key="json_io")
def comparison_stand_in(judge_calibration: dict) -> dict:
    """Reads judge_calibration as score_comparison will: it must not run when the judge fails."""
    return {"judge_id": judge_calibration["judge_id"]}


class _ScoreBy:
    def __init__(self, judge_id, score_of):
        self.judge_id, self._score_of = judge_id, score_of

    def judge(self, items):
        return [JudgeVerdict(score=s, reply=f"<answer>{s}</answer>") for s in map(self._score_of, items)]


def _by_length(item) -> int:
    """5 for an answer as long as the human's, one point off per quarter of its length missed or added."""
    human, model = len(str(item.human_answer)), len(str(item.model_answer))
    return max(1, 5 - round(4 * abs(human - model) / max(human, 1)))


class LengthJudgeResource(JudgeResource):
    def build(self, prompts):
        return _ScoreBy("test:length", _by_length)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An instance whose only batch (3 synthetic clips and the real one) has raw_clips materialized."""
    root = tmp_path_factory.mktemp("calibration")
    write_sample_batch(root, BATCH, n_synthetic=3, seed=0)
    resources = small_resources(
        str(root),
        clip_registry=ClipRegistryResource(db_url=sqlite_url(root / "_registry.sqlite")),
        parquet_io=ParquetIOManager(base_dir=str(root / "assets")),
        json_io=JsonIOManager(base_dir=str(root / "json")),
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
        yield instance, resources


def _calibrate(ingested, judge):
    """judge_calibration, its check and the stand-in, in one run; (record, check evaluation, stand-in ran?)."""
    instance, resources = ingested
    result = dg.materialize(
        list(defs.assets) + [judge_separates_answers, comparison_stand_in],
        selection=dg.AssetSelection.assets(judge_calibration, comparison_stand_in),
        resources={**resources, "judge": judge},
        instance=instance,
        raise_on_error=False,
    )
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "judge_calibration" in materialized
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "judge_separates_answers" and evaluation.severity == dg.AssetCheckSeverity.ERROR
    return result.output_for_node("judge_calibration"), evaluation, "comparison_stand_in" in materialized


def test_the_offline_judge_passes_and_the_comparison_runs(ingested):
    record, evaluation, downstream_ran = _calibrate(ingested, OfflineJudgeResource())
    assert record["passed"] and evaluation.passed and downstream_ran, record["reason"]
    assert set(record) == RECORD_KEYS
    assert record["judge_id"] == "offline:all-minilm-l6-v2:v2" and record["judge_calls"] == 0
    assert record["thresholds"] == {"min_gap": 2.0, "min_paraphrase_mean": 4.0}
    assert record["labelled_clips"] == record["sampled_clips"] == 4 and record["failed_items"] == 0
    by_field = {row["field"]: row for row in record["by_field"]}
    assert len(by_field) == 15 and by_field["safety_analysis"]["verdict"] == "met"
    for row in by_field.values():
        assert row["verdict"] in ("met", "skipped") and (row["gap"] is None or row["gap"] >= 2.0)
    assert "judge_calibration" in REPORTING_ASSETS  # runs in the reporting job, with its check


def test_a_judge_scoring_by_answer_length_fails_and_blocks_the_comparison(ingested):
    record, evaluation, downstream_ran = _calibrate(ingested, LengthJudgeResource())
    assert not record["passed"] and not evaluation.passed and not downstream_ran
    assert {"safety_analysis", "lane_type", "driving_difficulty"} <= set(record["missed_fields"])
    assert "the judge cannot tell right from wrong" in evaluation.metadata["reason"].value


def test_an_llm_judge_that_always_says_5_fails_and_blocks_and_a_rerun_is_free(ingested, tmp_path):
    with OpenAIStubServer(lambda request: "Looks the same. <answer>5</answer>") as server:
        judge = OpenAIJudgeResource(
            api_key="test",
            model="calibration-test",
            base_url=server.base_url,
            max_retries=0,
            max_in_flight=4,  # the stub's listen backlog is small: a refused connection would be a failed item
            db_url=sqlite_url(tmp_path / "judge.sqlite"),
        )
        record, evaluation, downstream_ran = _calibrate(ingested, judge)
        asked = len(server.requests)
        again, _, _ = _calibrate(ingested, judge)
        assert len(server.requests) == asked  # every verdict came from the cache
    assert not record["passed"] and not evaluation.passed and not downstream_ran
    assert record["means"] == {"paraphrase": 5.0, "constant": 5.0, "other": 5.0} and record["failed_items"] == 0
    assert 0 < asked == record["judge_calls"] <= record["judged_items"]  # an item asked twice is judged once
    assert again["judge_calls"] == 0 and again["judge_cache_hits"] == record["judged_items"]
    assert len(record["missed_fields"]) == 14  # every field with a wrong answer to compare (rule_violation: none)
