"""Beyond one machine: AVDAG_STATE_URL on S3 (moto), and every stage on a fresh $AVDAG_HOME.

The batch lands in one bucket, the state lives in another. Ingest and baseline captions run with
one home, training and promotion with a second, fine-tuned captions, scores, the report and the
catalog with a third; each home is deleted before the next stage starts, and `avdag search` and
`avdag lineage` answer from a fourth. A stage that read anything an earlier one left on local disk
fails here, and no home may hold state of its own: only node-local scratch copies.
"""

import json
import shutil

import dagster as dg
import pytest

from avdag.cli import main
from avdag.core.ingest.splits import split_for
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import REAL_CLIP_ID, write_sample_batch
from avdag.resources.io_managers import MissingStoredValueError
from avdag_tests.support.pipeline_helpers import (
    ALL_ASSETS,
    EVAL_FRACTION,
    small_resources,
    small_run_config,
    state_with_tiny_model,
)

BATCH = "drive-0042"
LANDING = "s3://fleet-landing/landing"
STATE_BUCKET = "avdag-state"
STATE = f"s3://{STATE_BUCKET}/prod"
STAGES = (
    ("ingest", ["raw_clips", "clip_quarantine", "clip_splits", "split_manifest", "baseline_captions"]),
    ("training", ["sft_checkpoint", "candidate_evaluation", "checkpoint_in_service"]),
    (
        "reports",
        [
            "finetuned_captions",
            "baseline_judge_scores",
            "finetuned_judge_scores",
            "judge_calibration",
            "score_comparison",
            "clip_catalog",
        ],
    ),
)
# The tiny model's answers decide the gate; this module is about where state lives, so it always promotes.
PROMOTE_ANYWAY = {"ops": {"candidate_evaluation": {"config": {"max_regression": 5.0}}}}
RUN_CONFIG = {"ingest": small_run_config(), "training": PROMOTE_ANYWAY, "reports": None}
# What only the state store may hold: a home holding any of these kept state on a node's disk.
STATE_FOLDERS = ("assets", "cache/captions", "checkpoints", "models", "reports", "catalog")


@pytest.fixture(scope="module")
def on_s3(s3, tmp_path_factory, tiny_model_path):
    """The three stages, each with its own (then deleted) home; returns the results and a fresh home."""
    root = tmp_path_factory.mktemp("state_on_s3")
    ids = write_sample_batch(root / "batch", BATCH, n_synthetic=4, seed=0)  # two eval clips
    s3.make_bucket("fleet-landing")
    s3.make_bucket(STATE_BUCKET)
    s3.upload_dir(root / "batch" / BATCH, f"fleet-landing/landing/{BATCH}")
    state_with_tiny_model(STATE, tiny_model_path, s3.endpoint_url)  # as `avdag demo` would have published it
    results, leftovers = {}, {}
    with dg.instance_for_test() as instance, pytest.MonkeyPatch.context() as env:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        env.setenv("AVDAG_STATE_URL", STATE)
        env.setenv("AVDAG_S3_ENDPOINT_URL", s3.endpoint_url)
        for name, assets in STAGES:
            home = root / f"home-{name}"
            env.setenv("AVDAG_HOME", str(home))
            results[name] = dg.materialize(
                ALL_ASSETS,
                selection=assets,
                partition_key=None if name == "training" else BATCH,
                run_config=RUN_CONFIG[name],
                resources=small_resources(LANDING, s3_endpoint_url=s3.endpoint_url),
                instance=instance,
            )
            leftovers[name] = [folder for folder in STATE_FOLDERS if (home / folder).exists()]
            shutil.rmtree(home)
        env.setenv("AVDAG_HOME", str(root / "home-elsewhere"))
        yield {"results": results, "leftovers": leftovers, "ids": ids, "instance": instance, "s3": s3}


def test_every_stage_succeeds_and_keeps_nothing_on_its_node(on_s3):
    assert all(result.success for result in on_s3["results"].values())
    assert on_s3["leftovers"] == {name: [] for name, _ in STAGES}


def test_everything_that_outlives_a_step_is_in_the_state_bucket(on_s3):
    stored = set(on_s3["s3"].fs().find(f"{STATE_BUCKET}/prod"))
    prefix = f"{STATE_BUCKET}/prod"
    checkpoint = on_s3["results"]["training"].output_for_node("checkpoint_in_service")
    for key in (
        f"assets/raw_clips/{BATCH}.parquet",
        f"assets/baseline_captions/{BATCH}.parquet",
        f"assets/finetuned_judge_scores/{BATCH}.parquet",
        "assets/sft_checkpoint.json",
        "assets/checkpoint_in_service.json",
        "assets/score_comparison.json",
        "models/tiny-qwen2.5-vl/_COMPLETE",
        f"checkpoints/sft-{checkpoint['checkpoint_id']}/_COMPLETE",
        f"checkpoints/sft-{checkpoint['checkpoint_id']}/model.safetensors",
        f"checkpoints/sft-{checkpoint['checkpoint_id']}.loss_curve.png",
        "reports/latest.json",
        "catalog/clips.parquet",
    ):
        assert f"{prefix}/{key}" in stored, key
    assert any(key.startswith(f"{prefix}/cache/captions/") for key in stored)


def test_records_name_stored_urls_and_hashes_never_a_local_path(on_s3):
    results = on_s3["results"]
    clips = results["ingest"].output_for_node("raw_clips", "raw_clips")
    assert "local_path" not in clips.columns and clips["source_url"].str.startswith(f"{LANDING}/{BATCH}/").all()
    checkpoint = results["training"].output_for_node("sft_checkpoint")
    assert checkpoint["path"] == f"{STATE}/checkpoints/sft-{checkpoint['checkpoint_id']}"
    assert checkpoint["base_model"] == f"{STATE}/models/tiny-qwen2.5-vl"
    tuned = results["reports"].output_for_node("finetuned_captions")
    assert set(tuned["model_path"]) == {checkpoint["path"]} and set(tuned["model_hash"]) == {checkpoint["weights_hash"]}
    assert set(results["ingest"].output_for_node("baseline_captions")["model_path"]) == {checkpoint["base_model"]}
    evaluation = results["training"].output_for_node("candidate_evaluation")
    eval_ids = {c for c in on_s3["ids"] if split_for(c, EVAL_FRACTION) == "eval"}
    assert evaluation["decision"]["eval_clips"] == len(eval_ids) > 0
    report = results["reports"].output_for_node("score_comparison")
    assert report["eval_clips"] == len(eval_ids) and report["weights_hash"] == checkpoint["weights_hash"]


def test_search_and_lineage_answer_from_a_fresh_home(on_s3, capsys):
    assert main(["search", f"clip_id={REAL_CLIP_ID}"]) == 0
    out = capsys.readouterr().out
    assert REAL_CLIP_ID in out and "1 clip(s)" in out
    scores = on_s3["results"]["reports"].output_for_node("finetuned_judge_scores")
    row = scores[scores["field"] == "weather"].iloc[0]
    assert main(["lineage", row["clip_id"], "weather", "--json"]) == 0
    captured = capsys.readouterr()
    chain = json.loads(captured.out)
    assert captured.err == "", captured.err  # no section differs from the score row
    assert chain["checkpoint"]["path"] == row["model_path"] and chain["checkpoint"]["weights_hash"] == row["model_hash"]
    assert chain["caption"]["found_in"] == f"{STATE}/cache/captions/{row['caption_key']}.json"


def test_a_stored_partition_that_went_missing_fails_the_reader_naming_it(on_s3):
    """Runs last: it deletes one stored partition. The instance says it was materialized, so the
    catalog must not be rebuilt from the other batches as if it never existed."""
    lost = f"{STATE_BUCKET}/prod/assets/baseline_captions/{BATCH}.parquet"
    on_s3["s3"].fs().rm_file(lost)
    with pytest.raises(MissingStoredValueError, match=f"s3://{lost}"):
        dg.materialize(
            ALL_ASSETS,
            selection=["clip_catalog"],
            resources=small_resources(LANDING, s3_endpoint_url=on_s3["s3"].endpoint_url),
            instance=on_s3["instance"],
        )
