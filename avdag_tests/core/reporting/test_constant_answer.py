"""The constant answer: a model that memorised the commonest label must not pass for one that sees the video."""

import json

import pandas as pd
import pytest

from avdag.core.captioning.prompts import PromptSet
from avdag.core.judging.judges import JudgeVerdict
from avdag.core.judging.score_captions import score_captions
from avdag.core.reporting.charts import compare_scores, constant_markdown
from avdag.core.reporting.constant_answer import (
    clips_of_split,
    constant_answers,
    constant_captions,
    constant_comparison,
    score_constant_answer,
)

PROMPTS = PromptSet("system", "user", "judge system", "judge user", {"weather": "What is the weather?"})
# 24 eval clips, three in four clear: always answering "Clear skies" is right 75% of the time.
EVAL_WEATHER = (["Clear skies"] * 3 + ["Light rain"]) * 6


class ExactJudge:
    """5 for the human's answer, 1 otherwise: a judge whose verdicts the test can predict."""

    judge_id = "exact-match"
    cache_scope = "exact-match"

    def __init__(self):
        self.items = 0

    def judge(self, items):
        self.items += len(items)
        return [
            JudgeVerdict(score=5 if item.model_answer == item.human_answer else 1, reply="<answer>?</answer>")
            for item in items
        ]


def clips(weather: list[str], batch: str = "b1", prefix: str = "e") -> pd.DataFrame:
    ids = [f"{prefix}{i:02d}" for i in range(len(weather))]
    return pd.DataFrame(
        {
            "clip_id": ids,
            "batch": batch,
            "sha256": [f"sha-{batch}-{i}" for i in ids],
            "source_url": [f"file:///{batch}/{i}.mp4" for i in ids],
            "label_json": [json.dumps({"weather": w}) for w in weather],
        }
    )


def model_scores(eval_clips: pd.DataFrame, answers: list[str], source: str) -> pd.DataFrame:
    """Score rows of a model that gave `answers` (in clip order), judged by ExactJudge."""
    captions = pd.DataFrame(
        {
            "clip_id": eval_clips["clip_id"],
            "caption_source": source,
            "model_path": source,
            "model_hash": source,
            "prompt_hash": "p",
            "generation": "{}",
            "caption_key": eval_clips["clip_id"],
            "parsed_json": [json.dumps({"weather": a}) for a in answers],
        }
    )
    return score_captions(ExactJudge(), PROMPTS, eval_clips, captions, log=lambda _: None)[0]


def test_the_constant_is_the_commonest_answer_in_the_form_the_judges_compare():
    labels = [
        {"rule_violation": "false", "road_type": "Local  street", "driving_difficulty": 2},
        {"rule_violation": "False", "road_type": "local street", "driving_difficulty": "3"},
        {"rule_violation": "False", "road_type": "Highway", "driving_difficulty": 3},
        {"rule_violation": "True", "road_type": "Local  street", "driving_difficulty": 3},
    ]
    answers = constant_answers(labels, ["rule_violation", "road_type", "driving_difficulty", "weather"])
    # "false" and "False" are one answer (3 of 4), given in its commonest spelling; so are "3" and 3;
    # two spellings of the local street (3 of 4) beat the highway; no label has the weather: no constant.
    assert answers == {"rule_violation": "False", "road_type": "Local  street", "driving_difficulty": 3}


def test_a_tie_goes_to_the_first_answer_in_sorted_order_every_time():
    labels = [{"weather": "Overcast"}, {"weather": "Clear skies"}]
    assert (
        constant_answers(labels, ["weather"])
        == constant_answers(labels[::-1], ["weather"])
        == {"weather": "Clear skies"}
    )


def test_splits_are_read_per_batch_and_unlabelled_clips_have_no_label():
    raw = pd.concat([clips(["Overcast", "Light rain"], "b1"), clips(["Clear skies"], "b2")], ignore_index=True)
    raw.loc[1, "label_json"] = None
    splits = pd.DataFrame(
        {"batch": ["b1", "b1", "b2"], "clip_id": ["e00", "e01", "e00"], "split": ["train", "unlabelled", "eval"]}
    )
    train = clips_of_split(raw, splits, "train")
    assert list(zip(train["batch"], train["clip_id"])) == [("b1", "e00")]  # e00 of b2 is an eval clip
    assert [json.loads(text) for text in train["label_json"]] == [{"weather": "Overcast"}]
    assert clips_of_split(raw, splits.iloc[0:0], "train").empty


def test_the_constant_is_scored_on_every_eval_clip_of_every_batch():
    eval_clips = pd.concat([clips(["Clear skies", "Light rain"], "b1"), clips(["Clear skies"], "b2")])
    judge = ExactJudge()
    rows = score_constant_answer(judge, PROMPTS, eval_clips, {"weather": "Clear skies"}, log=lambda _: None)
    assert judge.items == 3
    assert sorted(zip(rows["batch"], rows["clip_id"], rows["score"])) == [
        ("b1", "e00", 5),
        ("b1", "e01", 1),
        ("b2", "e00", 5),
    ]
    assert set(rows["caption_source"]) == {"constant"} and rows["model_answer"].eq('"Clear skies"').all()
    assert constant_captions(eval_clips, {"weather": "x"})["model_hash"].nunique() == 1


def test_a_template_model_beats_the_baseline_but_not_the_constant_and_a_seeing_model_beats_both():
    eval_clips = clips(EVAL_WEATHER)
    train_labels = [{"weather": w} for w in ["Clear skies"] * 30 + ["Light rain"] * 10 + ["Overcast"] * 5]
    answers = constant_answers(train_labels, ["weather"])
    constant = score_constant_answer(ExactJudge(), PROMPTS, eval_clips, answers, log=lambda _: None)
    baseline = model_scores(eval_clips, ["Overcast"] * 24, "baseline")
    template = model_scores(eval_clips, ["Clear skies"] * 24, "finetuned")
    seeing = model_scores(eval_clips, EVAL_WEATHER, "finetuned")

    assert one(compare_scores(baseline, template, ["weather"]))["finetuned_better"]  # what the old report said
    memorised = one(constant_comparison(baseline, template, constant, ["weather"], answers))
    assert memorised["constant_answer"] == '"Clear skies"'
    assert memorised["constant_mean_score_strict"] == pytest.approx(4.0)  # 18 x 5 + 6 x 1, over 24
    assert memorised["finetuned_diff"] == 0.0 and not memorised["finetuned_better"]
    assert memorised["baseline_worse"] and memorised["baseline_diff"] == pytest.approx(-3.0)

    learned = one(constant_comparison(baseline, seeing, constant, ["weather"], answers))
    assert learned["finetuned_diff"] == pytest.approx(1.0) and learned["finetuned_better"]
    assert 0 < learned["finetuned_diff_low"] < 1 < learned["finetuned_diff_high"]
    assert learned["finetuned_n_paired"] == 24 and not learned["small_sample"]
    assert "+1.00 [" in constant_markdown(constant_comparison(baseline, seeing, constant, ["weather"], answers))


def test_a_field_without_a_constant_is_a_missing_answer_for_the_constant():
    eval_clips = clips(EVAL_WEATHER[:4])
    prompts = PromptSet("s", "u", "js", "ju", {"weather": "?", "lighting": "?"})
    constant = score_constant_answer(ExactJudge(), prompts, eval_clips, {"lighting": "Night"}, log=lambda _: None)
    weather = constant[constant["field"] == "weather"]
    assert weather["model_answer"].isna().all() and weather["score"].isna().all()
    table = constant_comparison(constant, constant, constant, ["weather"], {"lighting": "Night"})
    assert one(table)["constant_answer"] is None and one(table)["constant_mean_score_strict"] == 1.0


def one(table: pd.DataFrame) -> pd.Series:
    assert len(table) == 1
    return table.iloc[0]
