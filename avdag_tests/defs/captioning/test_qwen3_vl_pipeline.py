"""The whole graph with the embedded tiny Qwen3-VL (Cosmos-Reason2's architecture): one batch, real assets,
as `test_pipeline.py` runs it on the tiny Qwen2.5-VL: ingest, captions, training, promotion, fine-tuned
captions, scores, reports and reviews."""

import dagster as dg

from avdag.core.common.database import sqlite_url
from avdag.defs.pipeline.code_versions import code_versions
from avdag.demo.sample_batch import write_sample_batch
from avdag.resources.captioner import CaptionerResource
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.pipeline_helpers import materialize_batch, small_resources, small_run_config

BATCH = "batch-qwen3"
PROMOTE_ANYWAY = {"candidate_evaluation": {"config": {"max_regression": 5.0}}}


def test_the_whole_graph_runs_on_a_qwen3_vl_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AVDAG_HOME", str(tmp_path / "home"))  # its own assets and instance
    landing = tmp_path / "landing"
    write_sample_batch(landing, BATCH, n_synthetic=2, seed=6)  # one eval clip at 50%
    captioner = CaptionerResource(model="embedded:tiny-qwen3-vl", max_new_tokens=8)
    resources = small_resources(
        str(landing),
        clip_registry=ClipRegistryResource(db_url=sqlite_url(landing / "_reg.sqlite")),
        captioner=captioner,
    )
    with dg.instance_for_test() as instance:
        # the gate judges 8-token answers of a 3-step fine-tune: promote whatever it says, the run is the point
        result = materialize_batch(instance, BATCH, resources, {"ops": {**small_run_config()["ops"], **PROMOTE_ANYWAY}})
        materialized = {
            event.asset_key.to_user_string() for event in result.get_asset_materialization_events() if event.asset_key
        }
    assert {"sft_checkpoint", "checkpoint_in_service", "finetuned_captions", "finetuned_judge_scores"} <= materialized
    assert {"score_comparison", "batch_review", "eval_review"} <= materialized
    captions = result.output_for_node("baseline_captions")
    assert len(captions) == 3 and captions["caption_error"].isna().all()
    assert captions["model_path"].str.endswith("models/tiny-qwen3-vl").all()
    assert (captions["new_tokens"] > 0).all()
    assert (captions["video_tokens"] % 144 == 0).all()  # 9 x 16 tokens of 32 pixels per temporal patch
    checkpoint = result.output_for_node("sft_checkpoint")
    assert checkpoint["base_family"] == "qwen3_vl"
    tuned = result.output_for_node("finetuned_captions")
    assert len(tuned) == 3 and tuned["caption_error"].isna().all()
    assert tuned["model_hash"].eq(checkpoint["weights_hash"]).all()  # captioned by the Qwen3-VL fine-tune
    # The family is part of the captions' code version: the same settings on a Qwen2.5-VL differ.
    qwen2 = code_versions({**resources, "captioner": CaptionerResource(max_new_tokens=8)})
    assert code_versions(resources)["baseline_captions"] != qwen2["baseline_captions"]
