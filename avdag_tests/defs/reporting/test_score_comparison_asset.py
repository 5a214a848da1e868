"""score_comparison materialized alone on stored upstream values: the constant answer, caption quality,
judge failures left out, and the small-sample warning reach the report, the metadata and the CLI."""

import json

import dagster as dg
import pandas as pd
import pytest

from avdag.core.captioning.caption_cache import CAPTION_COLUMNS
from avdag.core.captioning.model import GenerationSettings
from avdag.core.judging.judges import JudgeVerdict
from avdag.core.judging.score_captions import score_captions
from avdag.definitions import build_resources, defs
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import JsonIOManager, ParquetIOManager
from avdag.resources.judge import JudgeResource
from avdag.resources.storage import StateStoreResource

BATCH = "b1"
WEIGHTS = "ft-weights"
# 8 eval clips (six clear, two rainy) and 16 train clips, most of them clear.
EVAL = [(f"e{i}", "Clear skies" if i % 4 else "Light rain") for i in range(8)]
TRAIN = [(f"t{i:02d}", "Clear skies" if i % 4 else "Overcast") for i in range(16)]
LIGHTING = "Daytime (diffused light)"


class ExactJudge:
    """5 for the human's answer, 1 otherwise; a `failing` one fails its call on the marked lighting labels."""

    judge_id = "exact-match"
    cache_scope = "exact-match"

    def __init__(self, failing: bool = False):
        self.failing = failing

    def judge(self, items):
        return [self._one(item) for item in items]

    def _one(self, item):
        if self.failing and item.human_answer == f"{LIGHTING}!":
            return JudgeVerdict(score=None, reply="", error="HTTP 503 after 3 tries")
        return JudgeVerdict(score=5 if item.model_answer == item.human_answer else 1, reply="<answer>?</answer>")


class ExactJudgeResource(JudgeResource):
    def build(self, prompts):
        return ExactJudge()


def _label(weather: str, clip_id: str) -> str:
    # The lighting label of half the eval clips carries a mark the failing judge recognises.
    lighting = f"{LIGHTING}!" if clip_id.startswith("e") and int(clip_id[1:]) % 2 else LIGHTING
    return json.dumps({"weather": weather, "lighting": lighting})


def _raw_clips() -> pd.DataFrame:
    rows = EVAL + TRAIN
    return pd.DataFrame(
        {
            "clip_id": [c for c, _ in rows],
            "batch": BATCH,
            "sha256": [f"sha-{c}" for c, _ in rows],
            "source_url": [f"file:///{c}.mp4" for c, _ in rows],
            "label_json": [_label(w, c) for c, w in rows],
        }
    )


def _captions(raw: pd.DataFrame, source: str, weather: str, model_hash: str, text: str) -> pd.DataFrame:
    frame = pd.DataFrame({column: [None] * len(raw) for column in CAPTION_COLUMNS})
    frame["clip_id"], frame["batch"], frame["clip_sha256"] = raw["clip_id"], BATCH, raw["sha256"]
    frame["caption_source"], frame["model_path"], frame["model_hash"] = source, source, model_hash
    frame["generation"] = GenerationSettings(max_new_tokens=64).fingerprint()
    frame["parsed_json"] = json.dumps({"weather": weather, "lighting": LIGHTING})
    frame["raw_text"] = text
    frame["new_tokens"] = 64 if "loop" in text else 20
    frame["cached"] = False
    return frame


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("comparison")
    raw = _raw_clips()
    splits = pd.DataFrame(
        {"clip_id": raw["clip_id"], "sha256": raw["sha256"], "split": ["eval"] * len(EVAL) + ["train"] * len(TRAIN)}
    )
    eval_clips = raw.iloc[: len(EVAL)]
    prompts = CaptionerResource().prompts()
    baseline_captions = _captions(raw, "baseline", "Overcast", "base", '{"weather": "Overcast"}')
    finetuned_captions = _captions(raw, "finetuned", "Clear skies", WEIGHTS, "loop loop loop loop " * 30)
    baseline = score_captions(ExactJudge(), prompts, eval_clips, baseline_captions, log=lambda _: None)[0]
    finetuned = score_captions(ExactJudge(failing=True), prompts, eval_clips, finetuned_captions, log=lambda _: None)
    finetuned = finetuned[0]
    values = {
        "raw_clips": raw,
        "clip_splits": splits,
        "baseline_captions": baseline_captions,
        "finetuned_captions": finetuned_captions,
        "baseline_judge_scores": baseline,
        "finetuned_judge_scores": finetuned,
    }
    for asset, frame in values.items():
        (root / "assets" / asset).mkdir(parents=True)
        frame.to_parquet(root / "assets" / asset / f"{BATCH}.parquet", index=False)
    (root / "assets" / "checkpoint_in_service.json").write_text(
        json.dumps({"checkpoint_id": "sft-1", "weights_hash": WEIGHTS})
    )
    result = _materialize_comparison(root, _calibration(passed=True))
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    return result.output_for_node("score_comparison"), metadata, root


def _calibration(passed: bool) -> dict:
    """A stored judge_calibration value, as that asset writes it."""
    return {
        "passed": passed,
        "reason": "gap 3.00 >= 2.0 on every field" if passed else "weather: gap 0.10 < 2.0",
        "judge_id": "exact-match",
        "thresholds": {"min_gap": 2.0, "min_paraphrase_mean": 4.0},
        "means": {"paraphrase": 5.0, "constant": 1.0 if passed else 4.9, "other": 1.0},
        "by_field": [],
    }


def _materialize_comparison(root, calibration: dict, **kwargs):
    (root / "assets" / "judge_calibration.json").write_text(json.dumps(calibration))
    resources = build_resources()
    resources.update(
        parquet_io=ParquetIOManager(base_dir=str(root / "assets")),
        json_io=JsonIOManager(base_dir=str(root / "assets")),
        judge=ExactJudgeResource(),
        state=StateStoreResource(url=str(root / "home")),
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        return dg.materialize(
            list(defs.assets), selection=["score_comparison"], resources=resources, instance=instance, **kwargs
        )


def test_the_report_flags_the_small_sample_and_leaves_judge_failures_out(materialized):
    report, metadata, _ = materialized
    assert report["eval_clips"] == report["paired_clips"] == 8
    assert report["small_sample"] and "fewer than 20" in report["small_sample_warning"]
    assert "small sample" in metadata["small_sample"].value
    lighting = next(row for row in report["table"] if row["field"] == "lighting")
    # Same lighting answers on both sides; the judge failed on four fine-tuned ones: no regression.
    assert lighting["judge_failures_excluded"] == 4 and lighting["n_paired"] == 4
    assert lighting["diff"] == 0.0 and not lighting["significant"]
    assert report["judge_failures_excluded"] == 4 and report["questions_finetuned_worse"] == 0
    assert "no answer = 1" in metadata["table"].value


def test_the_report_carries_the_judge_calibration(materialized):
    report, metadata, _ = materialized
    assert report["judge_calibration"]["passed"] and report["judge_calibration"]["judge_id"] == "exact-match"
    assert "gap 3.00" in metadata["judge_calibration"].value


def test_a_judge_that_failed_calibration_publishes_no_comparison(materialized):
    """A run that selects only score_comparison (the Batch API sensor's) is not stopped by the blocking check."""
    from avdag.core.common.state_store import StateStore
    from avdag.core.reporting.published import latest_report

    _, _, root = materialized
    store = StateStore(str(root / "home"))
    before = latest_report(store).json
    try:
        result = _materialize_comparison(root, _calibration(passed=False), raise_on_error=False)
        after = latest_report(store).json
    finally:
        _materialize_comparison(root, _calibration(passed=True))  # leave the module's files as they were
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "failed calibration (weather: gap 0.10 < 2.0)" in str(failure.step_failure_data.error)
    assert after == before  # nothing new published


def test_the_template_model_beats_the_baseline_but_not_the_constant(materialized):
    report, metadata, _ = materialized
    weather = next(row for row in report["table"] if row["field"] == "weather")
    assert weather["finetuned_better"]  # always "Clear skies" against always "Overcast"
    constant = report["constant_answer"]
    assert constant["answers"]["weather"] == "Clear skies" and constant["train_clips"] == 16
    row = next(row for row in constant["table"] if row["field"] == "weather")
    assert row["constant_mean_score_strict"] == pytest.approx(4.0)  # 6 x 5 + 2 x 1, over 8
    assert row["finetuned_diff"] == 0.0 and not row["finetuned_better"]
    assert row["baseline_worse"]
    assert constant["questions_finetuned_better"] == 0
    assert "Clear skies" in metadata["constant_answer"].value


def test_caption_quality_shows_the_looping_fine_tuned_model(materialized):
    report, metadata, _ = materialized
    quality = {row["source"]: row for row in report["caption_quality"]}
    assert quality["finetuned"]["repetitive"] == quality["finetuned"]["hit_token_cap"] == 24
    assert quality["baseline"]["repetitive"] == quality["baseline"]["hit_token_cap"] == 0
    assert "repetitive" in metadata["caption_quality"].value


def test_the_cli_prints_the_warning_the_constant_and_the_caption_quality(materialized, monkeypatch, capsys):
    from avdag import cli

    _, _, root = materialized
    monkeypatch.setenv("AVDAG_STATE_URL", str(root / "home"))
    cli._print_report()
    out = capsys.readouterr().out
    assert "WARNING: small sample: 8 eval clip(s)" in out
    assert "mean (no answer = 1, judge failures left out) per question" in out
    assert "against the constant answer" in out and "better than the constant on 0" in out
    assert "caption quality" in out
