"""The OpenAI judge over real HTTP to a local stub."""

from __future__ import annotations

import os
from typing import Any

from avdag.core.judging.items import JudgeItem, format_judge_prompt
from avdag.core.judging.judges import (
    JudgeVerdict,
    OpenAIChatJudge,
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
    """Asked once more (both calls counted), then recorded as a reply without a score."""
    with OpenAIStubServer(lambda request: "bad") as server:
        [verdict] = _openai_judge(server, model="judge-model").judge([_item("lane_type", "a", "b")])
    assert verdict == JudgeVerdict(
        score=None, reply="bad", error=None, attempts=2, prompt_tokens=20, completion_tokens=2
    )
    assert len(server.requests) == 2 and server.requests[0]["model"] == "judge-model"


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
