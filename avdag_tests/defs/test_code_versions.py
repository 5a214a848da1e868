"""Prompts, models and judge settings are part of the model-driven assets' code versions."""

import shutil

import dagster as dg

from avdag.core.captioning.prompts import PROJECT_PROMPTS_DIR
from avdag.definitions import build_resources, defs
from avdag.defs.pipeline.code_versions import code_versions, with_code_versions
from avdag.resources.captioner import CaptionerResource
from avdag.resources.judge import OpenAIJudgeResource


def _versions(**overrides):
    return code_versions({**build_resources(), **overrides})


def test_a_prompt_change_moves_captions_training_and_judging(tmp_path):
    base = _versions()
    edited = tmp_path / "prompts"
    shutil.copytree(PROJECT_PROMPTS_DIR, edited)
    (edited / "user_prompt.txt").write_text((edited / "user_prompt.txt").read_text() + "\nBe concise.")
    changed = _versions(captioner=CaptionerResource(prompts_dir=str(edited)))
    for name in ("baseline_captions", "finetuned_captions", "sft_checkpoint"):
        assert changed[name] != base[name], name
    assert changed["baseline_judge_scores"] == base["baseline_judge_scores"]  # the judge prompt did not change

    (edited / "judge_system.txt").write_text("Score strictly.")
    judged = _versions(captioner=CaptionerResource(prompts_dir=str(edited)))
    assert judged["finetuned_judge_scores"] != changed["finetuned_judge_scores"]


def test_model_and_judge_settings_move_only_what_they_feed():
    base = _versions()
    other_model = _versions(captioner=CaptionerResource(model="nvidia/Cosmos-Reason1-7B"))
    assert other_model["baseline_captions"] != base["baseline_captions"]
    other_judge = _versions(judge=OpenAIJudgeResource(api_key="k", model="gpt-4.1"))
    assert other_judge["baseline_judge_scores"] != base["baseline_judge_scores"]
    assert other_judge["baseline_captions"] == base["baseline_captions"]
    sampled = _versions(captioner=CaptionerResource(temperature=0.1))
    assert sampled["finetuned_captions"] != base["finetuned_captions"]


def test_definitions_carry_the_versions():
    graph = defs.resolve_asset_graph()
    expected = code_versions(build_resources())
    for name, version in expected.items():
        assert graph.get(dg.AssetKey(name)).code_version == version
    assert graph.get(dg.AssetKey("raw_clips")).code_version is None
    tagged = with_code_versions(list(defs.assets), {"clip_splits": "v-test"})
    assert {a.key.to_user_string(): a.code_versions_by_key for a in tagged if a.keys == {dg.AssetKey("clip_splits")}}[
        "clip_splits"
    ][dg.AssetKey("clip_splits")] == "v-test"
