"""The offline judge with the real MiniLM model: what it scores, and how.

Calibration v2 (the default, mode "reference") ranks a free-text answer among the other clips'
human answers; v1 (mode "similarity", cosine thresholds alone) is kept for comparison.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from avdag.core.judging.items import JudgeItem, parse_judge_score
from avdag.core.judging.offline_judge import (
    SIMILARITY_THRESHOLDS,
    OfflineEmbeddingJudge,
    reference_answers_of,
    similarity_to_score,
)
from avdag.core.judging.paraphrase import paraphrase_answer
from avdag.demo.sample_data import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import plan_clip

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _item(field: str, human: Any, model: Any, question: str = "Describe it.") -> JudgeItem:
    return JudgeItem(field=field, question=question, human_answer=human, model_answer=model)


@pytest.fixture(scope="module")
def offline_judge() -> Iterator[OfflineEmbeddingJudge]:
    judge = OfflineEmbeddingJudge(device="cpu")
    judge.model  # load once for the module  # noqa: B018
    yield judge


def _scores(judge: OfflineEmbeddingJudge, items: list[JudgeItem]) -> list[int | None]:
    verdicts = judge.judge(items)
    for verdict in verdicts:
        assert verdict.reply.endswith(f"<answer>{verdict.score}</answer>")
        assert verdict.score == parse_judge_score(verdict.reply)
        assert verdict.error is None
    return [verdict.score for verdict in verdicts]


@pytest.fixture(scope="module")
def v1_judge(offline_judge: OfflineEmbeddingJudge) -> OfflineEmbeddingJudge:
    judge = OfflineEmbeddingJudge(mode="similarity")
    judge._model = offline_judge.model  # noqa: SLF001
    return judge


@pytest.fixture(scope="module")
def labels() -> dict[str, dict[str, Any]]:
    """12 synthetic labels of the demo generator and the real clip's."""
    labels = {clip_id: label for clip_id, _, label in (plan_clip(0, i) for i in range(12))}
    labels[REAL_CLIP_ID] = json.loads((REAL_CLIP_DIR / f"{REAL_CLIP_ID}.label.json").read_text())
    return labels


def test_offline_judge_id_names_model_and_calibration() -> None:
    assert OfflineEmbeddingJudge().judge_id == "offline:all-minilm-l6-v2:v2"
    assert OfflineEmbeddingJudge(mode="similarity").judge_id == "offline:all-minilm-l6-v2:v1"
    with pytest.raises(ValueError):
        OfflineEmbeddingJudge(mode="exact")


def test_offline_identical_answers_score_5(offline_judge: OfflineEmbeddingJudge) -> None:
    items = [
        _item("road_conditions", "Wet surface with puddles", "Wet surface with puddles"),
        _item("safety_analysis", "The ego vehicle yields.", "the ego  vehicle yields."),
        _item("additional_traffic_rules", None, None),
        _item("traffic_light", "N/A", None),
        _item("weather", "Light rain", "Light rain"),
        _item("driving_difficulty", 3, 3),
        _item("rule_violation", "False", "False"),
        _item("interactive_expanded_metaaction", ["Yield to VRUs"], ["Yield to VRUs"]),
    ]
    assert _scores(offline_judge, items) == [5] * len(items)


def test_offline_multiple_choice_exact_match(offline_judge: OfflineEmbeddingJudge) -> None:
    items = [
        _item("weather", "Light rain", "Light rain"),
        _item("weather", "Light rain", "Clear skies"),
        _item("weather", "Light rain", "light  RAIN"),
        _item("lighting", "Daytime (low\u2011contrast daylight)", "Daytime (low-contrast daylight)"),
        _item("lighting", "Daytime (low-contrast daylight)", "Daytime (low\u2013contrast daylight)"),
        _item("lighting", "Daytime (low-contrast daylight)", "Daytime (direct sunlight)"),
        _item("rule_violation", "False", False),
        _item("interesting_scenario", "True", "False"),
        _item("driving_difficulty", 3, "3"),
        _item("driving_difficulty", 3, 4),
        _item("driving_difficulty", 3, 1),
    ]
    assert _scores(offline_judge, items) == [5, 1, 5, 5, 5, 1, 5, 1, 5, 2, 1]


def test_offline_metaaction_overlap(offline_judge: OfflineEmbeddingJudge) -> None:
    both = ["Yield to VRUs", "Vehicle following"]
    items = [
        _item("interactive_expanded_metaaction", both, list(reversed(both))),
        _item("interactive_expanded_metaaction", both, ["yield to vrus"]),  # Jaccard 1/2
        _item("interactive_expanded_metaaction", both, ["Yield to VRUs", "Overtake vehicles"]),  # 1/3
        _item("interactive_expanded_metaaction", both, ["Overtake vehicles"]),
        _item("interactive_expanded_metaaction", None, []),
        _item("interactive_expanded_metaaction", None, ["Vehicle following"]),
        _item("interactive_expanded_metaaction", ["Vehicle following"], "Vehicle following"),
    ]
    assert _scores(offline_judge, items) == [5, 3, 2, 1, 5, 1, 5]


def test_v1_similarity_mode_paraphrase_beats_unrelated(v1_judge: OfflineEmbeddingJudge) -> None:
    human = "clear blue skies"
    paraphrase, unrelated = _scores(
        v1_judge,
        [
            _item("road_conditions", human, "the sky is sunny and cloudless"),
            _item("road_conditions", human, "heavy rain at night"),
        ],
    )
    assert paraphrase > unrelated
    assert (paraphrase, unrelated) == (3, 1)  # cosine ~0.54 and ~0.34 under calibration v1

    lane = "Single lane each direction, no turn lanes."
    close, different = _scores(
        v1_judge,
        [
            _item("lane_type", lane, "One lane in each direction without turn lanes."),
            _item("lane_type", lane, "Highway with four lanes and a shoulder, no oncoming traffic."),
        ],
    )
    assert close == 5 and different < close


def test_offline_garbage_scores_1(offline_judge: OfflineEmbeddingJudge) -> None:
    items = [
        _item("road_conditions", "Wet surface with puddles", "xq7#@!pl zzkv"),
        _item("safety_analysis", "The ego vehicle yields to a pedestrian.", 42),
        _item("lane_type", "Single lane each direction.", {"lanes": 1}),
        _item("traffic_sign", "A no stopping sign.", None),
        _item("weather", "Light rain", 7),
        _item("weather", "Light rain", "Drizzle-ish"),
        _item("lighting", "Daytime (diffused light)", ["Daytime (diffused light)"]),
        _item("driving_difficulty", 3, True),
        _item("driving_difficulty", 3, "hard"),
        _item("driving_difficulty", 4, 5),  # out of the 1-4 scale, not "off by one"
        _item("rule_violation", "False", "maybe"),
        _item("interactive_expanded_metaaction", ["Yield to VRUs"], 12),
        _item("interactive_expanded_metaaction", ["Yield to VRUs"], ["asdf"]),
    ]
    assert _scores(offline_judge, items) == [1] * len(items)


def test_offline_free_text_is_encoded_in_one_batch(
    offline_judge: OfflineEmbeddingJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real_encode = offline_judge.model.encode

    def counting_encode(texts: list[str], **kwargs: Any) -> Any:
        calls.append(list(texts))
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(offline_judge.model, "encode", counting_encode)
    items = [
        _item("road_type", "Collector road", "A collector road"),
        _item("weather", "Overcast", "Overcast"),
        _item("lane_type", "Two lanes", "Two lanes each way"),
        _item("junction_type", "Straight segment", "Straight segment"),  # identical: no encode
    ]
    verdicts = offline_judge.judge(items)
    assert len(verdicts) == 4
    assert len(calls) == 1
    assert set(calls[0]) == {"Collector road", "A collector road", "Two lanes", "Two lanes each way"}
    assert offline_judge.judge([]) == []


def test_similarity_thresholds_are_monotonic() -> None:
    thresholds = [threshold for threshold, _ in SIMILARITY_THRESHOLDS]
    assert thresholds == sorted(thresholds, reverse=True)
    assert [similarity_to_score(s) for s in (1.0, 0.85, 0.84, 0.7, 0.5, 0.4, 0.39, -1.0)] == [5, 5, 4, 4, 3, 2, 1, 1]


def test_a_constant_answer_or_another_clips_scores_clearly_below_a_paraphrase(
    offline_judge: OfflineEmbeddingJudge, v1_judge: OfflineEmbeddingJudge, labels: dict[str, dict[str, Any]]
) -> None:
    """The issue: v1 gave a template safety_analysis 4.6/5. Now, on every free-text field, right beats wrong."""
    judge = offline_judge.with_reference_labels(labels.values())
    fields = ["safety_analysis", "lane_type", "road_conditions", "traffic_sign", "additional_map_rules"]
    template = {field: labels["syn-0000-0000"][field] for field in fields}  # one clip's answer, given for every clip
    for field in fields:
        clips = [c for c, label in labels.items() if label[field].casefold() != template[field].casefold()]
        right = [_item(field, labels[c][field], paraphrase_answer(field, labels[c][field])) for c in clips]
        wrong = [_item(field, labels[c][field], template[field]) for c in clips]
        right_scores, wrong_scores = _scores(judge, right), _scores(judge, wrong)
        assert min(right_scores) >= 3 and max(wrong_scores) <= 2, (field, right_scores, wrong_scores)
        assert sum(right_scores) / len(clips) >= 4.5, (field, right_scores)
    v1_wrong = _scores(
        v1_judge,
        [_item("safety_analysis", label["safety_analysis"], template["safety_analysis"]) for label in labels.values()],
    )
    assert sum(v1_wrong) / len(v1_wrong) >= 4  # the template fooled v1


def test_a_count_that_differs_caps_the_score_even_without_a_pool(offline_judge: OfflineEmbeddingJudge) -> None:
    human = "Two lanes in the ego's direction, separated from oncoming traffic by a median"
    wrong_count, same_count = _scores(
        offline_judge,
        [
            _item(
                "lane_type", human, "Three lanes in the ego's direction, separated from oncoming traffic by a median"
            ),
            _item("lane_type", human, "2 lanes in the ego's direction, split from oncoming traffic by a median"),
        ],
    )
    assert wrong_count <= 3 < same_count


def test_the_pool_is_fixed_at_construction_and_a_verdict_does_not_depend_on_the_call(
    offline_judge: OfflineEmbeddingJudge, labels: dict[str, dict[str, Any]]
) -> None:
    judge = offline_judge.with_reference_labels(labels.values())
    items = [
        _item("safety_analysis", label["safety_analysis"], labels[REAL_CLIP_ID]["safety_analysis"])
        for label in labels.values()
    ]
    together = judge.judge(items)
    alone = [judge.judge([item])[0] for item in items]
    assert together == alone
    # one clip: no other answer to rank against, the similarity alone decides (and says so)
    single = offline_judge.with_reference_labels([labels["syn-0000-0000"]])  # items[0]'s own clip
    (verdict,) = single.judge([items[0]])
    assert "no other clip's answer" in verdict.reply


def test_reference_answers_are_the_distinct_free_text_answers(labels: dict[str, dict[str, Any]]) -> None:
    pool = reference_answers_of(
        [
            {"lane_type": "Two lanes", "weather": "Overcast", "additional_map_rules": None},
            {"lane_type": "two  LANES", "additional_map_rules": "N/A"},
            {"lane_type": "One lane", "interactive_expanded_metaaction": ["Yield to VRUs"]},
        ]
    )
    assert pool == {"lane_type": ("One lane", "Two lanes")}  # multiple-choice, metaaction and absent answers left out
    assert reference_answers_of(labels.values()) == reference_answers_of(reversed(list(labels.values())))


def test_the_pool_is_encoded_with_the_items_in_one_batch(
    offline_judge: OfflineEmbeddingJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    judge = offline_judge.with_reference_labels([{"lane_type": "Two lanes"}, {"lane_type": "Four lanes"}])
    calls: list[list[str]] = []
    real_encode = judge.model.encode
    monkeypatch.setattr(
        judge.model, "encode", lambda texts, **kw: calls.append(list(texts)) or real_encode(texts, **kw)
    )
    judge.judge([_item("lane_type", "Two lanes", "2 lanes"), _item("road_type", "Highway", "A highway")])
    assert len(calls) == 1 and set(calls[0]) == {"Two lanes", "2 lanes", "Four lanes", "Highway", "A highway"}
