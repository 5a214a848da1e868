"""Both judges: the OpenAI judge over real HTTP to a local stub, the offline judge with real MiniLM."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from avdag.core.judging.items import JudgeItem, format_judge_prompt, parse_judge_score
from avdag.core.judging.judges import (
    SIMILARITY_THRESHOLDS,
    JudgeVerdict,
    OfflineEmbeddingJudge,
    OpenAIChatJudge,
    similarity_to_score,
)
from avdag_tests.support.openai_stub_server import OpenAIStubServer, StubReply

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYSTEM_PROMPT = "You are a helpful assistant who has been tasked with evaluating the reponses."
USER_TEMPLATE = "Given the question ``%s'', human:\n%s\nLLM:\n%s\n<answer>[Single digit between 1 and 5]</answer>"


def _item(field: str, human: Any, model: Any, question: str = "Describe it.") -> JudgeItem:
    return JudgeItem(field=field, question=question, human_answer=human, model_answer=model)


def _user_prompt(request: dict[str, Any]) -> str:
    return next(message["content"] for message in request["messages"] if message["role"] == "user")


def _openai_judge(server: OpenAIStubServer, **overrides: Any) -> OpenAIChatJudge:
    options: dict[str, Any] = dict(
        model="gpt-5",
        api_key="sk-test",
        base_url=server.base_url,
        system_prompt=SYSTEM_PROMPT,
        user_template=USER_TEMPLATE,
        timeout_s=5.0,
        max_retries=0,
    )
    return OpenAIChatJudge(**(options | overrides))


# --------------------------------------------------------------------------- OpenAIChatJudge


def test_openai_judge_sends_recipe_messages_and_parses_replies() -> None:
    items = [
        _item("weather", "Light rain", "Light rain", "Describe the weather conditions."),
        _item("interactive_expanded_metaaction", ["Yield to VRUs"], None, "What category?"),
    ]

    def reply_fn(request: dict[str, Any]) -> str:
        return "Same weather.\n<answer>4</answer>" if "weather" in _user_prompt(request) else "Different. 2"

    with OpenAIStubServer(reply_fn) as server:
        judge = _openai_judge(server)
        verdicts = judge.judge(items)

    assert judge.judge_id == f"openai:gpt-5@{server.base_url}"
    assert verdicts == [
        JudgeVerdict(
            score=4, reply="Same weather.\n<answer>4</answer>", attempts=1, prompt_tokens=10, completion_tokens=3
        ),
        JudgeVerdict(score=2, reply="Different. 2", attempts=1, prompt_tokens=10, completion_tokens=2),
    ]
    assert len(server.requests) == 2
    by_prompt = {_user_prompt(request): request for request in server.requests}  # calls run concurrently
    for item in items:
        request = by_prompt[format_judge_prompt(USER_TEMPLATE, item.question, item.human_answer, item.model_answer)]
        assert request["model"] == "gpt-5"
        assert "temperature" not in request
        assert request["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert any("['Yield to VRUs']\nLLM:\nNone\n" in prompt for prompt in by_prompt)
    assert server.request_headers[0]["authorization"] == "Bearer sk-test"


def test_openai_judge_reply_without_score_is_none_not_error() -> None:
    with OpenAIStubServer(lambda request: "bad") as server:
        [verdict] = _openai_judge(server, model="judge-model").judge([_item("lane_type", "a", "b")])
    assert verdict == JudgeVerdict(
        score=None, reply="bad", error=None, attempts=1, prompt_tokens=10, completion_tokens=1
    )
    assert server.requests[0]["model"] == "judge-model"


def test_openai_judge_http_500_becomes_error_verdict_and_loop_goes_on() -> None:
    def reply_fn(request: dict[str, Any]) -> str | StubReply:
        if "FAIL" in _user_prompt(request):
            # retry-after-ms keeps the client's one retry fast.
            return StubReply(status=500, content="boom", headers={"retry-after-ms": "5"})
        return "fine <answer>5</answer>"

    items = [_item("road_type", "a", "FAIL"), _item("lane_type", "a", "ok"), _item("junction_type", "a", "FAIL")]
    with OpenAIStubServer(reply_fn) as server:
        verdicts = _openai_judge(server, max_retries=1).judge(items)

    assert [verdict.score for verdict in verdicts] == [None, 5, None]
    assert verdicts[0].error and "500" in verdicts[0].error and "boom" in verdicts[0].error
    assert verdicts[1].error is None
    assert len(server.requests) == 5  # two tries for each failing item, one for the good one


def test_openai_judge_timeout_becomes_error_verdict() -> None:
    def reply_fn(request: dict[str, Any]) -> str | StubReply:
        slow = "SLOW" in _user_prompt(request)
        return StubReply(content="<answer>3</answer>", delay_s=1.0 if slow else 0.0)

    with OpenAIStubServer(reply_fn) as server:
        judge = _openai_judge(server, timeout_s=0.2)
        verdicts = judge.judge([_item("road_type", "a", "SLOW"), _item("lane_type", "a", "b")])
    assert verdicts[0].score is None and "Timeout" in (verdicts[0].error or "")
    assert verdicts[1] == JudgeVerdict(
        score=3, reply="<answer>3</answer>", attempts=1, prompt_tokens=10, completion_tokens=1
    )


def test_openai_judge_unreachable_server_is_an_error_verdict() -> None:
    with OpenAIStubServer() as server:
        pass  # started and stopped: its port is now closed
    judge = OpenAIChatJudge(
        api_key="sk-test",
        base_url=server.base_url,
        system_prompt=SYSTEM_PROMPT,
        user_template=USER_TEMPLATE,
        timeout_s=2.0,
        max_retries=0,
    )
    [verdict] = judge.judge([_item("weather", "Overcast", "Overcast")])
    assert verdict.score is None and verdict.error


# --------------------------------------------------------------------------- OfflineEmbeddingJudge


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


def test_offline_judge_id_names_model_and_calibration() -> None:
    assert OfflineEmbeddingJudge.judge_id == "offline:all-minilm-l6-v2:v1"


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


def test_offline_paraphrase_beats_unrelated(offline_judge: OfflineEmbeddingJudge) -> None:
    human = "clear blue skies"
    paraphrase, unrelated = _scores(
        offline_judge,
        [
            _item("road_conditions", human, "the sky is sunny and cloudless"),
            _item("road_conditions", human, "heavy rain at night"),
        ],
    )
    assert paraphrase > unrelated
    assert (paraphrase, unrelated) == (3, 1)  # cosine ~0.54 and ~0.34 under calibration v1

    lane = "Single lane each direction, no turn lanes."
    close, different = _scores(
        offline_judge,
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
