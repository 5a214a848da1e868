"""The judge's spend metadata on real materializations of the score assets, against a loopback judge.

The graph runs on a small batch in this module's own Dagster instance and asset folders. Captions
come from a loopback VLM stub (the tiny model's captions do not parse, so it would leave nothing to
judge); training is the real 3-step fine-tune of the tiny model. The judge is `OpenAIJudgeResource`
talking HTTP to `OpenAIStubServer`, whose reply depends on the question only: most questions get a
score of 4, some an out-of-range <answer>9</answer>, one a reply with no number, some HTTP 400
(not retried). Every expected count is derived from what the server received and answered.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.common.labels import WEATHER, format_label_as_answer
from avdag.core.ingest.splits import split_for
from avdag.core.judging.items import format_judge_prompt
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import REAL_CLIP_DIR, REAL_CLIP_ID, write_sample_batch
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import JsonIOManager, ParquetIOManager
from avdag.resources.judge import OfflineJudgeResource, OpenAIJudgeResource
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.remote_captioner import OpenAIVlmCaptionerResource
from avdag.resources.trainer import EmbeddedTrainerResource
from avdag_tests.support.openai_stub_server import OpenAIStubServer, StubReply, chat_completion_body
from avdag_tests.support.pipeline_helpers import (
    ALL_ASSETS,
    EVAL_FRACTION,
    small_resources,
    small_run_config,
    state_with_tiny_model,
)

BATCH = "batch-judge-spend"
SEED = 5  # with 3 synthetic clips: two eval clips, two train clips
FINETUNED_MODEL = "avdag-sft-stub"

PROMPTS = CaptionerResource().prompts()
FIELD_OF_QUESTION = {question: field for field, question in PROMPTS.questions.items()}

# The judge's reply by question; every other question is scored 4.
ERROR_FIELDS = {"traffic_sign", "driving_difficulty"}  # HTTP 400: a failure, never retried
OUT_OF_RANGE_FIELDS = {"weather", "lane_type"}  # <answer>9</answer>
PARSE_FAILURE_FIELDS = {"junction_type"}  # no number at all

REAL_LABEL = json.loads((REAL_CLIP_DIR / f"{REAL_CLIP_ID}.label.json").read_text())
# The fine-tuned "model" answers like the baseline except on three fields (a failing, an
# out-of-range and a scored one), so the shared verdict cache covers the rest of its items.
FINETUNED_LABEL = dict(
    REAL_LABEL,
    weather=next(w for w in WEATHER if w != REAL_LABEL["weather"]),
    driving_difficulty=REAL_LABEL["driving_difficulty"] % 4 + 1,
    safety_analysis="A calm freeway drive in the right lane; nothing cuts in and the ego keeps its distance.",
)


def _vlm_reply(request: dict[str, Any]) -> str:
    """Every clip gets the real clip's label as its caption (a different one from the 'fine-tuned' model)."""
    return format_label_as_answer(FINETUNED_LABEL if request["model"] == FINETUNED_MODEL else REAL_LABEL)


def _user_turn(request: dict[str, Any]) -> str:
    return next(m["content"] for m in request["messages"] if m["role"] == "user")


@dataclass(frozen=True)
class Reply:
    """One judge request as the server saw and answered it."""

    prompt: str  # the user turn: identifies the item (question, human and model answers)
    kind: str  # "scored", "error", "out_of_range" or "parse_failure"
    status: int
    prompt_tokens: int  # what the reply's usage reports (0 for an HTTP error: no usage)
    completion_tokens: int


class JudgeReplies:
    """reply_fn for the judge stub: the outcome follows the question; logs every reply it gives."""

    def __init__(self) -> None:
        self.log: list[Reply] = []
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> str | StubReply:
        prompt = _user_turn(request)
        # The question is the first one the prompt names (the template puts it before the answers).
        question = min((q for q in FIELD_OF_QUESTION if q in prompt), key=prompt.index)
        field = FIELD_OF_QUESTION[question]
        if field in ERROR_FIELDS:
            reply: str | StubReply = StubReply(status=400, content="unsupported request")
            kind, status, usage = "error", 400, {"prompt_tokens": 0, "completion_tokens": 0}
        else:
            if field in OUT_OF_RANGE_FIELDS:
                reply, kind = "Far too generous a rubric. <answer>9</answer>", "out_of_range"
            elif field in PARSE_FAILURE_FIELDS:
                reply, kind = "I cannot compare these answers.", "parse_failure"
            else:  # a reply length that varies with the item, so the token sums are not a multiple of one reply
                reply, kind = "Mostly the same" + " answer" * (len(prompt) % 4) + ". <answer>4</answer>", "scored"
            status, usage = 200, chat_completion_body(str(request.get("model")), reply, 0)["usage"]
        with self._lock:
            self.log.append(Reply(prompt, kind, status, usage["prompt_tokens"], usage["completion_tokens"]))
        return reply


@dataclass(frozen=True)
class ScoreRun:
    source: str
    result: dg.ExecuteInProcessResult
    replies: list[Reply]  # what the judge server answered during this run, in order
    requests: list[dict[str, Any]]  # what it received during this run

    @property
    def frame(self) -> pd.DataFrame:
        return self.result.output_for_node(f"{self.source}_judge_scores")


@pytest.fixture(scope="module")
def spend(tmp_path_factory, tiny_model_path):
    """Captions and checkpoint once; then each score asset alone, twice: baseline, finetuned, baseline, finetuned."""
    root = tmp_path_factory.mktemp("judge_spend")
    ids = write_sample_batch(root / "landing", BATCH, n_synthetic=3, seed=SEED)
    replies = JudgeReplies()
    with (
        dg.instance_for_test() as instance,  # this module's own instance: its partition never reaches other modules
        OpenAIStubServer(_vlm_reply) as vlm,
        OpenAIStubServer(replies) as judge_server,
    ):
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        resources = small_resources(
            str(root / "landing"),
            clip_registry=ClipRegistryResource(db_url=sqlite_url(root / "registry.sqlite")),
            state=state_with_tiny_model(str(root / "state"), tiny_model_path),
            parquet_io=ParquetIOManager(base_dir=str(root / "assets")),
            json_io=JsonIOManager(base_dir=str(root / "assets")),
            captioner=OpenAIVlmCaptionerResource(
                base_urls=[vlm.base_url],
                finetuned_base_urls=[vlm.base_url],
                finetuned_served_model=FINETUNED_MODEL,
                max_in_flight=2,
            ),
            trainer=EmbeddedTrainerResource(steps=1, batch_size=1, warmup_steps=0),
            judge=OpenAIJudgeResource(
                api_key="test", base_url=judge_server.base_url, db_url=sqlite_url(root / "judge.sqlite")
            ),
        )

        def materialize(selection: dg.AssetSelection, judge=None, **run_config) -> dg.ExecuteInProcessResult:
            # without_checks: the judge calibration checks call the judge too; every request here is the asset's
            return dg.materialize(
                ALL_ASSETS,
                selection=selection.without_checks(),
                partition_key=BATCH,
                instance=instance,
                resources={**resources, **({"judge": judge} if judge else {})},
                run_config=run_config,
            )

        # Captions and the promoted checkpoint first. The promotion's own evaluation judges with the
        # offline judge here, so the stub judge and its cache see only the score assets' traffic.
        captioned = dg.AssetSelection.assets("baseline_captions", "finetuned_captions").upstream()
        materialize(captioned.required_multi_asset_neighbors(), judge=OfflineJudgeResource(), **small_run_config())
        assert not judge_server.requests
        runs = []
        for source in ("baseline", "finetuned", "baseline", "finetuned"):
            start = len(judge_server.requests)
            result = materialize(dg.AssetSelection.assets(f"{source}_judge_scores"))
            assert len(replies.log) == len(judge_server.requests)  # every request was answered by reply_fn
            runs.append(ScoreRun(source, result, replies.log[start:], judge_server.requests[start:]))
        yield {"runs": runs, "instance": instance, "ids": ids}


def _materializations(instance: dg.DagsterInstance, source: str) -> list:
    """The score asset's materializations of BATCH in the instance, oldest first."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(f"{source}_judge_scores"), asset_partitions=[BATCH]),
        limit=100,
    ).records
    return sorted(records, key=lambda record: record.storage_id)


def _metadata(record) -> dict[str, Any]:
    return {name: value.value for name, value in record.asset_materialization.metadata.items()}


def _judged_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that became judge items (the others have no model answer to judge)."""
    return frame[frame["model_answer"].notna()]


def _item_prompt(row) -> str:
    """The judge's user turn for a score row: how the server tells items apart."""
    return format_judge_prompt(
        PROMPTS.judge_user, row.question, json.loads(row.human_answer), json.loads(row.model_answer)
    )


def _expected_spend(runs: list[ScoreRun], index: int) -> dict[str, int]:
    """The judge_* metadata that the server's traffic implies for runs[index].

    An item's outcome is the last reply the server gave to its prompt, up to this run; an item
    counts as a call only when its prompt reached the server during this run. Only scored verdicts
    are cached, so every prompt not scored before this run must have been asked again (a reply
    without a score is asked twice: the judge asks it once more).
    """
    run = runs[index]
    prompts = [_item_prompt(row) for row in _judged_rows(run.frame).itertuples()]
    last_reply = {reply.prompt: reply for earlier in runs[: index + 1] for reply in earlier.replies}
    scored_before = {reply.prompt for earlier in runs[:index] for reply in earlier.replies if reply.kind == "scored"}
    asked = Counter(reply.prompt for reply in run.replies)
    asks = {prompt: 2 if last_reply[prompt].kind == "parse_failure" else 1 for prompt in set(prompts) - scored_before}
    assert asked == asks, "each unscored item is asked once (without a score: twice), scored ones never"
    outcomes = Counter(last_reply[prompt].kind for prompt in prompts)
    return {
        "judge_items": len(prompts),
        "judge_calls": len(run.requests),
        "judge_cache_hits": len(prompts) - len(asked),
        "judge_failures": outcomes["error"],
        "judge_parse_failures": outcomes["parse_failure"],
        "judge_out_of_range": outcomes["out_of_range"],
        "judge_prompt_tokens": sum(reply.prompt_tokens for reply in run.replies),
        "judge_completion_tokens": sum(reply.completion_tokens for reply in run.replies),
        "judge_rate_limited_calls": 0,
    }


def test_every_item_is_judged_and_the_mix_is_present(spend):
    runs = spend["runs"]
    eval_ids = {c for c in spend["ids"] if split_for(c, EVAL_FRACTION) == "eval"}
    assert len(eval_ids) == 2
    for run in runs:
        frame = run.frame
        assert set(frame["clip_id"]) == eval_ids and len(frame) == 15 * len(eval_ids)
        assert frame["model_answer"].notna().all(), "the stub captions answer every question"
    first = runs[0]
    kinds = Counter(reply.kind for reply in first.replies)
    assert set(kinds) == {"scored", "error", "out_of_range", "parse_failure"}, kinds
    assert kinds["scored"] > sum(kinds.values()) / 2


@pytest.mark.parametrize("index", range(4), ids=["baseline", "finetuned", "baseline-again", "finetuned-again"])
def test_spend_metadata_matches_the_server_traffic(spend, index):
    runs, instance = spend["runs"], spend["instance"]
    run = runs[index]
    nth = sum(r.source == run.source for r in runs[:index])
    records = _materializations(instance, run.source)
    assert len(records) == sum(r.source == run.source for r in runs)
    record = records[nth]
    assert record.run_id == run.result.run_id
    metadata = _metadata(record)
    expected = _expected_spend(runs, index)
    assert {name: metadata[name] for name in expected} == expected
    # The rows say the same, item by item.
    frame = run.frame
    assert (
        metadata["scores"]
        == int(frame["score"].notna().sum())
        == len(frame) - sum(expected[k] for k in ("judge_failures", "judge_parse_failures", "judge_out_of_range"))
    )
    assert (frame.loc[frame["score"].notna(), "score"] == 4).all()
    assert int(frame["judge_error"].notna().sum()) == expected["judge_failures"]
    assert frame["judge_error"].dropna().str.startswith("HTTP 400 after 1 attempt").all()
    assert int(frame["judge_attempts"].sum()) == expected["judge_calls"]
    assert int(frame["cached"].sum()) == expected["judge_cache_hits"]
    assert int(frame["prompt_tokens"].sum()) == expected["judge_prompt_tokens"]
    assert int(frame["completion_tokens"].sum()) == expected["judge_completion_tokens"]
    assert metadata["judge_id"].startswith("openai:gpt-5@http://127.0.0.1")


def test_first_baseline_run_asks_every_distinct_item_once(spend):
    first = spend["runs"][0]
    metadata = _metadata(_materializations(spend["instance"], "baseline")[0])
    distinct = {_item_prompt(row) for row in _judged_rows(first.frame).itertuples()}
    asked_twice = {reply.prompt for reply in first.replies if reply.kind == "parse_failure"}  # no score: once more
    assert metadata["judge_calls"] == len(first.requests) == len(distinct) + len(asked_twice) > len(asked_twice) > 0
    assert metadata["judge_cache_hits"] == metadata["judge_items"] - len(distinct)  # identical items in the batch
    assert (
        metadata["judge_failures"] > 0 and metadata["judge_parse_failures"] > 0 and metadata["judge_out_of_range"] > 0
    )


@pytest.mark.parametrize("source", ["baseline", "finetuned"])
def test_rematerializing_asks_again_only_what_was_not_scored(spend, source):
    runs = [r for r in spend["runs"] if r.source == source]
    first, again = runs
    before, after = (_metadata(r) for r in _materializations(spend["instance"], source))
    items = _judged_rows(first.frame)
    unscored = items[items["score"].isna()]  # failed, unparseable or out of range: not cached
    unscored_prompts = {_item_prompt(row) for row in unscored.itertuples()}
    # Identical items in one batch are asked once; the copies count as cache hits (they cost nothing).
    copies = len(unscored) - len(unscored_prompts)
    asked_twice = {reply.prompt for reply in again.replies if reply.kind == "parse_failure"}  # no score: once more
    assert after["judge_calls"] == len(again.requests) == len(unscored_prompts) + len(asked_twice) > 0
    assert {_user_turn(request) for request in again.requests} == unscored_prompts
    assert after["judge_cache_hits"] == before["scores"] + copies == len(items) - len(unscored_prompts)
    # Scored rows come from the cache at no cost; the same replies give the same failures again.
    rescored = again.frame.set_index(["clip_id", "field"]).loc[first.frame.set_index(["clip_id", "field"]).index]
    was_scored = first.frame["score"].notna().to_numpy()
    assert rescored["cached"].to_numpy()[was_scored].all()
    assert (rescored["judge_attempts"].to_numpy()[was_scored] == 0).all()
    for name in ("judge_items", "judge_failures", "judge_parse_failures", "judge_out_of_range", "scores"):
        assert after[name] == before[name], name
    assert after["judge_prompt_tokens"] == 10 * sum(r.status == 200 for r in again.replies)


def test_the_cache_is_shared_between_baseline_and_finetuned(spend):
    baseline, finetuned = spend["runs"][:2]
    scored_by_baseline = {r.prompt for r in baseline.replies if r.kind == "scored"}
    finetuned_prompts = {_item_prompt(row) for row in _judged_rows(finetuned.frame).itertuples()}
    reused = finetuned_prompts & scored_by_baseline
    assert reused and finetuned_prompts - scored_by_baseline, "some items shared, some new"
    assert not reused & {_user_turn(request) for request in finetuned.requests}
    changed = finetuned.frame[finetuned.frame["field"].isin(["weather", "driving_difficulty", "safety_analysis"])]
    changed_prompts = {_item_prompt(row) for row in changed.itertuples()}
    assert changed_prompts <= {_user_turn(request) for request in finetuned.requests}  # answers baseline never gave


def test_score_run_id_is_the_materializing_run(spend):
    runs, instance = spend["runs"], spend["instance"]
    assert len({run.result.run_id for run in runs}) == len(runs)
    for source in ("baseline", "finetuned"):
        mine = [run for run in runs if run.source == source]
        for run, record in zip(mine, _materializations(instance, source), strict=True):
            assert run.result.success and record.run_id == run.result.run_id
            assert run.frame["score_run_id"].eq(run.result.run_id).all()
