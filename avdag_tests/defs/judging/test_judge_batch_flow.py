"""Batch API scoring in Dagster: a run submits and ends, the sensor waits, the requested run collects.

Captions come from a loopback VLM server (no model run), the judge from a loopback server that speaks
the files and batches endpoints; both are driven by the real `openai` client.
"""

import json

import dagster as dg
import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.common.labels import format_label_as_answer
from avdag.defs.judging.batch_api_sensor import batch_api_judge_sensor
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import REAL_CLIP_DIR, write_sample_batch
from avdag.resources.judge import OpenAIJudgeResource
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.remote_captioner import OpenAIVlmCaptionerResource
from avdag_tests.support.openai_stub_server import OpenAIStubServer
from avdag_tests.support.pipeline_helpers import ALL_ASSETS, small_resources, small_run_config

BATCH = "batch-judge-api"
CAPTION = format_label_as_answer(json.loads((REAL_CLIP_DIR / "solidWhiteRight.label.json").read_text()))
SCORES = "baseline_judge_scores"


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_batch_landing")
    write_sample_batch(root, BATCH, n_synthetic=5, seed=0)
    return root


def _sense(instance, judge):
    return batch_api_judge_sensor(dg.build_sensor_context(instance=instance, resources={"judge": judge}))


def test_batch_scoring_is_submitted_then_collected_by_the_run_the_sensor_requests(landing, tmp_path, monkeypatch):
    monkeypatch.setenv("AVDAG_HOME", str(tmp_path / "home"))  # its own assets, cache and ledger
    with (
        dg.instance_for_test() as instance,
        OpenAIStubServer(lambda body: CAPTION) as vlm,
        OpenAIStubServer(lambda body: "They agree. <answer>4</answer>") as judge_server,
    ):
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        judge_server.hold_batches = True
        judge = OpenAIJudgeResource(
            api_key="test", model="judge-test", base_url=judge_server.base_url, use_batch_api=True, max_retries=0
        )
        captioner = OpenAIVlmCaptionerResource(model="nvidia/Cosmos-Reason1-7B", base_urls=[vlm.base_url])
        resources = small_resources(
            str(landing),
            clip_registry=ClipRegistryResource(db_url=sqlite_url(tmp_path / "reg.sqlite")),
            captioner=captioner,
            judge=judge,
        )

        def materialize(selection, partition=BATCH, raise_on_error=True):
            return dg.materialize(
                ALL_ASSETS,
                selection=selection,
                partition_key=partition,
                resources=resources,
                instance=instance,
                raise_on_error=raise_on_error,
                run_config=small_run_config() if "clip_splits" in selection else None,
            )

        first = materialize(["raw_clips", "clip_quarantine", "clip_splits", "baseline_captions", SCORES])
        materialized = {e.asset_key.to_user_string() for e in first.get_asset_materialization_events()}
        assert SCORES not in materialized and "baseline_captions" in materialized
        (batch,) = judge_server.batches.values()
        requests = len(judge_server.files[batch["input_file_id"]].decode().splitlines())
        assert requests > 0 and judge_server.batch_lines_processed == []
        observation = instance.fetch_observations(dg.AssetKey(SCORES), limit=1).records[0].asset_observation
        assert observation.partition == BATCH and observation.metadata["judge_batch_requests"].value == requests

        waiting = _sense(instance, judge)
        assert isinstance(waiting, dg.SkipReason) and "1 judge batch submissions still running" in waiting.skip_message
        again = materialize([SCORES])  # a run while the batch runs buys nothing new
        assert not again.get_asset_materialization_events() and len(judge_server.batches) == 1

        judge_server.finish_batch(batch["id"])
        (request,) = _sense(instance, judge)
        assert request.partition_key == BATCH and request.run_key.startswith("judge-batch:")
        assert {key.to_user_string() for key in request.asset_selection} == {
            SCORES,
            "judge_calibration",
            "score_comparison",
        }
        assert _sense(instance, judge)[0].run_key == request.run_key, "the same ended batch, the same run key"

        # A judge that says 4 to everything fails calibration: the scores are collected, the comparison is not made.
        collected = materialize([key.to_user_string() for key in request.asset_selection], raise_on_error=False)
        scores = collected.output_for_node(SCORES)
        judged = scores[scores["model_answer"].notna()]
        assert (judged["score"] == 4).all()
        # One request per distinct (question, human answer, model answer): clips sharing an answer share a verdict.
        assert requests == len(judged[["question", "human_answer", "model_answer"]].drop_duplicates()) < len(judged)
        assert judged["judge_id"].str.startswith("openai-batch:judge-test@http://127.0.0.1").all()
        assert (scores["score_run_id"] == collected.run_id).all()
        metadata = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in collected.get_asset_materialization_events()
        }
        assert metadata[SCORES]["judge_calls"].value == requests == len(judge_server.batch_lines_processed)
        assert metadata[SCORES]["judge_cache_hits"].value == len(judged) - requests
        assert "judge_calibration" in metadata and "score_comparison" not in metadata
        (gate,) = collected.get_asset_check_evaluations()
        assert gate.check_name == "judge_separates_answers" and not gate.passed

        after = _sense(instance, judge)
        assert isinstance(after, dg.SkipReason) and "0 judge batch submissions still running" in after.skip_message
        rerun = materialize([SCORES])  # every verdict is cached now: it materializes at once, for free
        rerun_metadata = rerun.get_asset_materialization_events()[0].materialization.metadata
        assert rerun_metadata["judge_calls"].value == 0 and rerun_metadata["judge_cache_hits"].value == len(judged)
        assert len(judge_server.batches) == 1


def test_the_sensor_does_nothing_for_a_live_judge(tmp_path):
    with dg.instance_for_test() as instance:
        live = OpenAIJudgeResource(api_key="test", base_url="http://127.0.0.1:9/v1")
        assert "answers live" in _sense(instance, live).skip_message
