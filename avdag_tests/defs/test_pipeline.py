"""End to end: materialize every real asset for a small batch (synthetic clips, the real clip,
a broken video and a malformed label) into a Dagster instance, then check what landed."""

import json

import dagster as dg
import pandas as pd
import pytest
from safetensors import safe_open

from avdag.core.common.database import sqlite_url
from avdag.core.common.state_store import StateStore
from avdag.core.ingest.splits import split_for
from avdag.definitions import defs
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import REAL_CLIP_ID, write_sample_batch
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.media import unique_copy
from avdag_tests.support.pipeline_helpers import ALL_ASSETS, EVAL_FRACTION, small_resources, small_run_config

BATCH = "batch-e2e"


def _resources(landing, **overrides):
    registry = ClipRegistryResource(db_url=sqlite_url(landing / "_registry.sqlite"))  # this module's own dedup state
    return small_resources(str(landing), clip_registry=registry, **overrides)


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    root = tmp_path_factory.mktemp("landing")
    ids = write_sample_batch(root, BATCH, n_synthetic=5, seed=0)
    batch_dir = root / BATCH
    (batch_dir / "videos" / "broken.camera_front_wide_120fov.mp4").write_bytes(
        b"\x00\x00\x00\x18ftypmp42 not really a video"
    )
    source = (batch_dir / "videos" / f"{ids[0]}.camera_front_wide_120fov.mp4").read_bytes()
    (batch_dir / "videos" / "badlabel.camera_front_wide_120fov.mp4").write_bytes(unique_copy(source, "badlabel"))
    (batch_dir / "metas" / "badlabel.label.json").write_text('{"weather": "Sunny-ish", ')
    return root, ids


@pytest.fixture(scope="module")
def instance():
    """This module's own Dagster instance: partitions other modules leave behind are not in it."""
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="module")
def pipeline_run(landing, tiny_model_path, instance):
    root, ids = landing
    instance.add_dynamic_partitions(clip_batches.name, [BATCH])
    result = dg.materialize(
        ALL_ASSETS,
        partition_key=BATCH,
        resources=_resources(root),
        instance=instance,
        run_config=small_run_config(),
        raise_on_error=True,
    )
    return result, instance, ids


def test_every_asset_materialized(pipeline_run):
    result, instance, _ = pipeline_run
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {
        "raw_clips",
        "clip_quarantine",
        "clip_splits",
        "split_manifest",
        "baseline_captions",
        "sft_checkpoint",
        "candidate_evaluation",
        "checkpoint_in_service",
        "finetuned_captions",
        "baseline_judge_scores",
        "finetuned_judge_scores",
        "judge_calibration",
        "score_comparison",
        "clip_catalog",
        "batch_review",
        "eval_review",
        "labeling_queue",
    }
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert set(checks) == {
        ("baseline_captions", "captions_parse_with_all_fields"),
        ("finetuned_captions", "captions_parse_with_all_fields"),
        ("split_manifest", "no_train_eval_leak"),
        ("clip_quarantine", "quarantine_counts"),
        ("judge_calibration", "judge_separates_answers"),
        ("candidate_evaluation", "candidate_not_worse"),
    }
    assert checks[("judge_calibration", "judge_separates_answers")] is True, (
        "the offline judge separates right from wrong"
    )
    assert checks[("split_manifest", "no_train_eval_leak")] is True
    assert checks[("candidate_evaluation", "candidate_not_worse")] is True  # gated the promotion


def test_the_candidate_is_judged_on_the_eval_split_against_the_base_model_then_promoted(pipeline_run):
    result, _, ids = pipeline_run
    evaluation = result.output_for_node("candidate_evaluation")
    checkpoint = result.output_for_node("sft_checkpoint")
    service = result.output_for_node("checkpoint_in_service")
    eval_ids = {c for c in ids if split_for(c, EVAL_FRACTION) == "eval"}
    assert {entry.split("/", 1)[1] for entry in evaluation["eval_clips"]} == eval_ids  # eval clips only
    assert evaluation["champion"]["checkpoint_id"] == "base-model"  # nothing was in service before
    assert evaluation["candidate"]["checkpoint_id"] == checkpoint["checkpoint_id"]
    assert evaluation["split_manifest_hash"] == checkpoint["split_manifest_hash"]
    assert evaluation["decision"]["eval_clips"] == len(eval_ids) and evaluation["decision"]["promote"]
    assert service["checkpoint_id"] == checkpoint["checkpoint_id"] and service["replaces"] == "base-model"
    assert service["weights_hash"] == checkpoint["weights_hash"]


def test_bad_inputs_are_quarantined_and_the_batch_goes_on(pipeline_run):
    result, _, ids = pipeline_run
    clips = result.output_for_node("raw_clips", "raw_clips")
    quarantine = result.output_for_node("raw_clips", "clip_quarantine")
    assert set(clips["clip_id"]) == set(ids) | {"badlabel"}
    assert pd.isna(clips.set_index("clip_id").loc["badlabel", "label_json"])
    by_check = {row.check: row for row in quarantine.itertuples()}
    assert by_check["video_decodable"].file.endswith("broken.camera_front_wide_120fov.mp4")
    assert by_check["label_json"].file.endswith("badlabel.label.json")
    assert "not valid JSON" in by_check["label_json"].reason
    real = clips.set_index("clip_id").loc[REAL_CLIP_ID]
    assert (real.width, real.height, real.codec) == (960, 540, "h264")


def test_splits_follow_the_id_hash_and_skip_unlabelled(pipeline_run):
    result, _, ids = pipeline_run
    splits = result.output_for_node("clip_splits").set_index("clip_id")["split"]
    assert splits["badlabel"] == "unlabelled"
    for clip_id in ids:
        assert splits[clip_id] == split_for(clip_id, EVAL_FRACTION)


def test_captions_cover_every_clip_with_model_and_prompt_identity(pipeline_run):
    result, _, ids = pipeline_run
    base = result.output_for_node("baseline_captions")
    tuned = result.output_for_node("finetuned_captions")
    checkpoint = result.output_for_node("sft_checkpoint")
    assert set(base["clip_id"]) == set(tuned["clip_id"]) == set(ids) | {"badlabel"}
    assert base["model_hash"].nunique() == 1 and tuned["model_hash"].nunique() == 1
    assert base["model_hash"].iloc[0] != tuned["model_hash"].iloc[0]
    assert tuned["model_hash"].iloc[0] == checkpoint["weights_hash"]
    assert (base["new_tokens"] > 0).all() and (base["video_tokens"] > 0).all()
    # The real clip (8.84 s, 960x540) at fps 2 and the recipe's max_pixels: 8 x 144 video tokens.
    assert base.set_index("clip_id").loc[REAL_CLIP_ID, "video_tokens"] == 1152


def test_checkpoint_is_a_loadable_safetensors_export_trained_on_train_clips(pipeline_run):
    result, _, ids = pipeline_run
    checkpoint = result.output_for_node("sft_checkpoint")
    train = {c for c in ids if split_for(c, EVAL_FRACTION) == "train"}
    assert set(checkpoint["train_clips"]) == train
    assert len(checkpoint["losses"]) == 3
    from pathlib import Path

    weights = Path(checkpoint["path"]) / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        assert any("visual" in key for key in handle.keys())
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint["path"])
    AutoProcessor.from_pretrained(checkpoint["path"])


def test_scores_carry_lineage_for_every_eval_clip_and_question(pipeline_run):
    result, _, ids = pipeline_run
    eval_ids = {c for c in ids if split_for(c, EVAL_FRACTION) == "eval"}
    assert eval_ids, "the fixture's seed must put at least one clip in eval"
    for source in ("baseline", "finetuned"):
        scores = result.output_for_node(f"{source}_judge_scores")
        assert set(scores["clip_id"]) == eval_ids
        assert len(scores) == 15 * len(eval_ids)
        for column in (
            "clip_sha256",
            "batch",
            "source_url",
            "model_hash",
            "caption_prompt_hash",
            "judge_id",
            "judge_prompt_hash",
            "caption_key",
        ):
            assert scores[column].notna().all(), column
        assert set(scores["caption_source"]) == {source}
        assert scores["judge_id"].iloc[0].startswith("offline:")


def test_lineage_traces_a_score_back_to_its_upload_caption_and_checkpoint(pipeline_run, avdag_home):
    from avdag.core.reporting.lineage import LineageError, format_lineage, score_lineage

    result, _, ids = pipeline_run
    scores = result.output_for_node("finetuned_judge_scores")
    row = scores[scores["field"] == "lighting"].iloc[0]
    store, scratch = StateStore(str(avdag_home)), avdag_home / "scratch"
    # --batch: the session's store holds other tests' batches, with the real clip in several of them
    lineage = score_lineage(store, scratch, row["clip_id"], "lighting", "finetuned", batch=BATCH)
    upload, caption, checkpoint, score = (lineage.sections[k] for k in ("upload", "caption", "checkpoint", "score"))
    assert upload["sha256"] == row["clip_sha256"] and upload["batch"] == BATCH
    assert lineage.sections["split"]["split"] == "eval"
    assert caption["model_hash"] == row["model_hash"] == checkpoint["weights_hash"]
    assert caption["caption_run_id"] is not None and caption["caption_key"] == row["caption_key"]
    assert checkpoint["checkpoint_id"] == result.output_for_node("sft_checkpoint")["checkpoint_id"]
    assert checkpoint["now_in_service"] == f"{checkpoint['checkpoint_id']} (this checkpoint)"
    assert score["human_answer"] == row["human_answer"] and score["judge_reply"] == row["judge_reply"]
    assert score["score_run_id"] == result.run_id
    assert lineage.mismatched == [], {name: section["check"] for name, section in lineage.sections.items()}
    assert "question lighting" in format_lineage(lineage)
    baseline = score_lineage(store, scratch, row["clip_id"], "lighting", "baseline", batch=BATCH)
    assert (
        baseline.mismatched == []
        and baseline.sections["model"]["model_hash"] == baseline.sections["caption"]["model_hash"]
    )
    with pytest.raises(LineageError, match="fields: weather, lighting"):
        score_lineage(store, scratch, row["clip_id"], "no such question", "finetuned", batch=BATCH)
    train_clip = next(c for c in ids if split_for(c, EVAL_FRACTION) == "train")
    with pytest.raises(LineageError, match="not an eval clip"):
        score_lineage(store, scratch, train_clip, "weather", "baseline", batch=BATCH)


def test_cli_lineage_prints_the_chain_and_names_what_is_missing(pipeline_run, capsys):
    from avdag.cli import main

    result, _, _ = pipeline_run
    row = result.output_for_node("baseline_judge_scores").iloc[0]
    assert main(["lineage", row["clip_id"], row["field"], "--source", "baseline", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["score"]["judge_reply"] == row["judge_reply"] and chain["upload"]["sha256"] == row["clip_sha256"]
    assert main(["lineage", "no-such-clip", "weather"]) == 2
    assert "no finetuned score for clip 'no-such-clip'" in capsys.readouterr().err


def test_comparison_report_written_as_png_and_json(pipeline_run, avdag_home):
    from avdag.core.reporting.published import latest_report

    result, _, _ = pipeline_run
    report = result.output_for_node("score_comparison")
    store = StateStore(str(avdag_home))
    files = latest_report(store)
    assert files.json.rsplit("/", 1)[0] == files.png.rsplit("/", 1)[0] == files.folder  # published together
    png = store.read_bytes(files.png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = store.read_json(files.json)
    assert on_disk["made_by_run"] == result.run_id and on_disk["batches_left_out"] == []
    assert on_disk["weights_hash"] == result.output_for_node("checkpoint_in_service")["weights_hash"]
    assert on_disk["questions"] == 15 == len(report["table"])
    assert on_disk == json.loads(json.dumps(report))
    assert [row["field"] for row in on_disk["table"]][:2] == ["weather", "lighting"]
    for row in on_disk["table"]:
        assert 1 <= row["baseline_mean_score_strict"] <= 5 and 1 <= row["finetuned_mean_score_strict"] <= 5


def test_rerun_reuses_captions_and_checkpoint(pipeline_run, landing):
    result, instance, _ = pipeline_run
    root, _ = landing
    again = dg.materialize(
        list(defs.assets),
        selection=["baseline_captions", "sft_checkpoint"],
        partition_key=BATCH,
        resources=_resources(root),
        instance=instance,
    )
    frame = again.output_for_node("baseline_captions")
    assert frame["cached"].all()
    metadata = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in again.get_asset_materialization_events()
    }
    assert metadata["baseline_captions"]["computed_now"].value == 0
    assert metadata["sft_checkpoint"]["status"].value == "cached"
    assert (
        again.output_for_node("sft_checkpoint")["weights_hash"]
        == result.output_for_node("sft_checkpoint")["weights_hash"]
    )


def test_catalog_answers_searches_over_the_batch(pipeline_run, avdag_home):
    from avdag.core.reporting.catalog import CATALOG, search

    result, _, ids = pipeline_run
    db = avdag_home / CATALOG  # the local state store's own file
    everything = search(db, "", limit=None)
    assert set(everything["clip_id"]) == set(ids) | {"badlabel"}
    labels = {
        c: json.loads(label)
        for c, label in result.output_for_node("raw_clips", "raw_clips")[["clip_id", "label_json"]].dropna().values
    }
    weather = labels[REAL_CLIP_ID]["weather"]
    expected = {c for c, label in labels.items() if label["weather"] == weather}
    assert set(search(db, f'weather="{weather}"', limit=None)["clip_id"]) == expected
    assert set(search(db, "unlabelled", limit=None)["clip_id"]) == {"badlabel"}


def test_cli_search_prints_matches(pipeline_run, capsys):
    from avdag.cli import main

    assert main(["search", f"clip_id={REAL_CLIP_ID}"]) == 0
    out = capsys.readouterr().out
    assert REAL_CLIP_ID in out and "1 clip(s)" in out
    assert main(["search", "colour=blue"]) == 2
    assert "colour" in capsys.readouterr().err


def test_cli_search_accepts_negated_terms(pipeline_run, capsys):
    from avdag.cli import main

    assert main(["search", "-unlabelled", "--limit", "100"]) == 0
    out = capsys.readouterr().out
    assert "badlabel" not in out and REAL_CLIP_ID in out


def test_a_second_candidate_is_judged_against_the_checkpoint_in_service(pipeline_run, landing):
    """Runs last in this module: it trains another checkpoint and may change the one in service."""
    from avdag.resources.trainer import EmbeddedTrainerResource

    result, instance, _ = pipeline_run
    root, _ = landing
    first = result.output_for_node("checkpoint_in_service")
    again = dg.materialize(
        ALL_ASSETS,
        selection=["split_manifest", "sft_checkpoint", "candidate_evaluation", "checkpoint_in_service"],
        resources=_resources(root, trainer=EmbeddedTrainerResource(steps=4, batch_size=1, warmup_steps=1)),
        instance=instance,
        raise_on_error=False,
    )
    evaluation = again.output_for_node("candidate_evaluation")
    assert evaluation["champion"]["checkpoint_id"] == first["checkpoint_id"]
    assert (
        evaluation["champion"]["path"] == first["path"]
        and evaluation["champion"]["weights_hash"] == first["weights_hash"]
    )
    assert evaluation["candidate"]["checkpoint_id"] != first["checkpoint_id"]
    gate = {e.check_name: e.passed for e in again.get_asset_check_evaluations()}["candidate_not_worse"]
    promoted = {e.asset_key.to_user_string() for e in again.get_asset_materialization_events()}
    assert ("checkpoint_in_service" in promoted) == gate == evaluation["decision"]["promote"]


def test_lineage_after_a_retrain_and_a_recaption_names_what_the_score_was_made_from(pipeline_run, landing, avdag_home):
    """A 2-step retrain (a new folder and sft_checkpoint record) and a re-caption with other generation
    settings (the batch's caption table overwritten), the scores left as they were: the chain is still
    the fixture's checkpoint and caption. After the test above, which may have changed the one in service."""
    from avdag.core.reporting.lineage import score_lineage
    from avdag.resources.captioner import CaptionerResource
    from avdag.resources.trainer import EmbeddedTrainerResource

    result, instance, _ = pipeline_run
    root, _ = landing
    first = result.output_for_node("sft_checkpoint")
    scores = result.output_for_node("finetuned_judge_scores")
    row = scores[scores["field"] == "weather"].iloc[0]
    trainer = EmbeddedTrainerResource(steps=2, batch_size=1, warmup_steps=1)
    retrained = dg.materialize(
        list(defs.assets), selection=["sft_checkpoint"], resources=_resources(root, trainer=trainer), instance=instance
    ).output_for_node("sft_checkpoint")
    dg.materialize(
        list(defs.assets),
        selection=["finetuned_captions"],
        partition_key=BATCH,
        resources=_resources(root, captioner=CaptionerResource(max_new_tokens=40)),
        instance=instance,
    )
    recaptioned = pd.read_parquet(avdag_home / "assets" / "finetuned_captions" / f"{BATCH}.parquet")
    assert row["caption_key"] not in set(recaptioned["caption_key"])
    assert (
        json.loads((avdag_home / "assets" / "sft_checkpoint.json").read_text())["checkpoint_id"]
        == (retrained["checkpoint_id"])
    )

    lineage = score_lineage(StateStore(str(avdag_home)), avdag_home / "scratch", row["clip_id"], "weather")
    checkpoint, caption = lineage.sections["checkpoint"], lineage.sections["caption"]
    assert checkpoint["checkpoint_id"] == first["checkpoint_id"] != retrained["checkpoint_id"]
    assert checkpoint["weights_hash"] == row["model_hash"] == first["weights_hash"]
    assert checkpoint["train_clips"] == len(first["train_clips"])
    assert checkpoint["final_loss"] == first["losses"][-1][1]
    assert checkpoint["latest_trained"] == f"{retrained['checkpoint_id']} (differs)"
    assert caption["caption_key"] == row["caption_key"] and caption["caption_run_id"] == result.run_id
    assert caption["now_in_table"].startswith("another caption (differs: re-captioned since this score)")
    assert lineage.mismatched == [], {name: section["check"] for name, section in lineage.sections.items()}
