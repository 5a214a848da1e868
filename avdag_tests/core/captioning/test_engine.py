"""The local captioning engine: batching, several workers, bad clips, and resume after a kill."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from avdag.core.captioning.caption_cache import CAPTION_CACHE, cache_entry, caption_clips
from avdag.core.captioning.engine import VlmCaptioner
from avdag.core.captioning.model import GenerationSettings
from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.common.state_store import ContentMismatchError, StateStore
from avdag.demo.sample_batch import REAL_CLIP_DIR
from avdag.demo.synthetic_clips import random_scene, render_clip

REAL_VIDEO = str(REAL_CLIP_DIR / "solidWhiteRight.camera_front_wide_120fov.mp4")
SETTINGS = GenerationSettings(max_new_tokens=32)


@pytest.fixture(scope="module")
def prompts():
    return load_prompt_set()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """Clips of different lengths, so a batch needs real left padding (different video token counts)."""
    root = tmp_path_factory.mktemp("engine_clips")
    rng = random.Random(7)
    paths = []
    for i, seconds in enumerate([2.0, 3.0, 4.0]):
        path = root / f"clip{i}.mp4"
        render_clip(random_scene(rng), path, duration_s=seconds, fps=10, seed=i)
        paths.append(str(path))
    return paths + [REAL_VIDEO]


def answers(captioner, paths, prompts):
    return dict(captioner.caption_stream(paths, prompts.system_prompt, prompts.user_prompt))


def finetuned_answers(finetuned_clips, clips_per_generate: int) -> dict:
    """Greedy answers of the fine-tuned model, captioning at the settings it was trained with."""
    settings = GenerationSettings(max_new_tokens=64, fps=finetuned_clips.fps, max_pixels=finetuned_clips.max_pixels)
    captioner = VlmCaptioner(
        finetuned_clips.model_path, device="cpu", settings=settings, clips_per_generate=clips_per_generate
    )
    return dict(
        captioner.caption_stream(finetuned_clips.clips, finetuned_clips.system_prompt, finetuned_clips.user_prompt)
    )


def test_batched_greedy_answers_equal_one_at_a_time(finetuned_clips):
    """Each clip has its own answer, ending at its own step, so a row mix-up or a row stopped at another
    row's step changes some clip's answer (checked: both make this test fail)."""
    clips = finetuned_clips.clips
    single = finetuned_answers(finetuned_clips, 1)
    batched = finetuned_answers(finetuned_clips, len(clips))
    assert sorted(single) == sorted(batched) == list(range(len(clips)))
    assert all(out.error is None for out in [*single.values(), *batched.values()])
    # The fixture bites: answers differ per clip, stop at different steps, and clips need padding.
    assert len({single[i].raw_text for i in range(len(clips))}) == len(clips), "answers should differ per clip"
    assert len({single[i].new_tokens for i in range(len(clips))}) == len(clips), "answers should end apart"
    assert max(o.new_tokens for o in single.values()) < 64, "every answer should stop before the cap"
    assert len({out.video_tokens for out in single.values()}) > 1, "clips should need padding"
    for i in range(len(clips)):
        one, many = single[i], batched[i]
        assert many.raw_text == one.raw_text, f"clip {i} differs when batched"
        assert (many.prompt_tokens, many.video_tokens, many.new_tokens) == (
            one.prompt_tokens,
            one.video_tokens,
            one.new_tokens,
        )


def test_each_row_stops_on_its_own(tiny_model_path):
    """The JSON stop marks rows done one by one (generate then pads them), and a row's reply ends at its
    own stop token or padding: a finished row neither grows nor ends another row."""
    from transformers import AutoTokenizer

    from avdag.core.captioning.engine import JsonAnswerComplete, _reply_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    pad, im_end = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer("Label it.", add_special_tokens=False)["input_ids"]
    done = tokenizer('{"a": 1}', add_special_tokens=False)["input_ids"]
    open_ = tokenizer('{"a": [1, 2', add_special_tokens=False)["input_ids"]
    width = 8 * (max(len(done), len(open_)) // 8 + 1)  # new tokens: a multiple of the check interval
    rows = [prompt + ids + [pad] * (width - len(ids)) for ids in (done, open_)]
    stop = JsonAnswerComplete(tokenizer, len(prompt))
    assert stop(torch.tensor(rows), None).tolist() == [True, False]
    assert stop(torch.tensor([r[:-1] for r in rows]), None).tolist() == [False, False], "checked every 8 tokens"

    stop_ids = {im_end}
    assert _reply_tokens([5, 6, im_end, pad, pad], stop_ids, pad) == [5, 6, im_end]  # ended by its stop token
    assert _reply_tokens([5, 6, 7, pad, pad], stop_ids, pad) == [5, 6, 7]  # marked done by the JSON stop
    assert _reply_tokens([5, 6, 7, 8], stop_ids, pad) == [5, 6, 7, 8]  # still running at the cap
    assert _reply_tokens([5, im_end, 7, 8], stop_ids, pad) == [5, im_end]  # nothing after its stop counts


def test_two_workers_share_the_clips_and_agree_with_one(tiny_model_path, clips, prompts):
    one = answers(VlmCaptioner(tiny_model_path, device="cpu", settings=SETTINGS, clips_per_generate=1), clips, prompts)
    two = answers(
        VlmCaptioner(tiny_model_path, devices=["cpu", "cpu"], settings=SETTINGS, clips_per_generate=1), clips, prompts
    )
    assert {i: o.raw_text for i, o in two.items()} == {i: o.raw_text for i, o in one.items()}


def test_a_bad_clip_reports_its_file_and_the_batch_goes_on(tiny_model_path, clips, prompts, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 20)
    paths = [clips[0], str(broken), clips[1]]
    captioner = VlmCaptioner(tiny_model_path, device="cpu", settings=SETTINGS, clips_per_generate=2)
    got = list(captioner.caption_stream(paths, prompts.system_prompt, prompts.user_prompt))
    assert sorted(i for i, _ in got) == [0, 1, 2]
    outputs = dict(got)
    assert outputs[1].error and "broken.mp4" in outputs[1].error
    assert outputs[0].error is None and outputs[2].error is None and outputs[0].new_tokens > 0


def _clip_frame(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(len(paths))],
            "batch": "b1",
            "sha256": [f"{i:064x}" for i in range(len(paths))],
            "source_url": paths,
        }
    )


def _quiet(_: str) -> None:
    pass


def _in_place(source_url: str, sha256: str) -> str:
    """The clips are local files already (their made-up hashes are not checked)."""
    return source_url


def _cached(root: Path) -> list[str]:
    """The cached caption files under a state-store root."""
    folder = root / CAPTION_CACHE
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


KILLABLE_RUN = textwrap.dedent("""
    import pathlib, sys, pandas as pd
    from avdag.core.captioning.caption_cache import caption_clips
    from avdag.core.captioning.engine import VlmCaptioner
    from avdag.core.common.state_store import StateStore
    from avdag.core.captioning.model import GenerationSettings
    from avdag.core.captioning.prompts import load_prompt_set
    model, frame, cache = sys.argv[1:4]
    captioner = VlmCaptioner(model, device="cpu", settings=GenerationSettings(max_new_tokens=32), clips_per_generate=1)
    clips = pd.read_json(frame, dtype=False)
    caption_clips(captioner, clips, load_prompt_set(), StateStore(cache), "baseline",
                  video=lambda url, sha: url, log=lambda line: print(line, flush=True))
""")


class CountingCaptioner:
    """Wraps the engine to record which clips it was asked to caption."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []
        self.model_path, self.model_hash, self.settings = inner.model_path, inner.model_hash, inner.settings

    def caption_stream(self, paths, system_prompt, user_prompt):
        self.asked.extend(paths)
        return self.inner.caption_stream(paths, system_prompt, user_prompt)


def test_a_run_killed_mid_batch_resumes_without_recomputing_or_tearing(tiny_model_path, clips, prompts, tmp_path):
    frame = _clip_frame(clips)
    frame_file = tmp_path / "clips.json"
    frame.to_json(frame_file)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_RUN, tiny_model_path, str(frame_file), str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[baseline] 2/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    survivors = _cached(cache)
    assert 2 <= len(survivors) < len(clips)
    assert all(p.endswith(".json") for p in survivors), f"torn or temp files left: {survivors}"

    engine = VlmCaptioner(tiny_model_path, device="cpu", settings=SETTINGS, clips_per_generate=2)
    counting = CountingCaptioner(engine)
    resumed = caption_clips(counting, frame, prompts, StateStore(str(cache)), "baseline", video=_in_place, log=_quiet)
    assert len(counting.asked) == len(clips) - len(survivors)
    assert resumed["cached"].sum() == len(survivors)
    assert _cached(cache) == sorted(f"{k}.json" for k in resumed["caption_key"])

    fresh = caption_clips(engine, frame, prompts, StateStore(str(tmp_path / "fresh")), "baseline", video=_in_place)
    assert resumed["raw_text"].tolist() == fresh["raw_text"].tolist()
    again = CountingCaptioner(engine)
    caption_clips(again, frame, prompts, StateStore(str(cache)), "baseline", video=_in_place, log=_quiet)
    assert again.asked == []


def test_failed_clips_are_not_cached_and_are_retried(tiny_model_path, clips, prompts, tmp_path):
    missing = str(tmp_path / "gone.mp4")
    frame = _clip_frame([clips[0], missing])
    engine = VlmCaptioner(tiny_model_path, device="cpu", settings=SETTINGS, clips_per_generate=2)
    store = StateStore(str(tmp_path))
    first = caption_clips(engine, frame, prompts, store, "baseline", video=_in_place, log=_quiet)
    assert first["caption_error"].isna().tolist() == [True, False]
    assert first.loc[1, "parse_error"].startswith("not captioned:") and "gone.mp4" in first.loc[1, "parse_error"]
    assert len(_cached(tmp_path)) == 1
    counting = CountingCaptioner(engine)
    caption_clips(counting, frame, prompts, store, "baseline", video=_in_place, log=_quiet)
    assert counting.asked == [missing]
    assert store.read_json(cache_entry(first.loc[0, "caption_key"]))["clip_id"] == "c0"


def test_a_clip_whose_video_cannot_be_fetched_fails_alone(tiny_model_path, clips, prompts, tmp_path):
    def fetch(source_url: str, sha256: str) -> str:
        if source_url.endswith("gone.mp4"):
            raise ContentMismatchError(f"{source_url}: sha256 differs from the one recorded")
        return source_url

    frame = _clip_frame([clips[0], str(tmp_path / "gone.mp4")])
    engine = CountingCaptioner(VlmCaptioner(tiny_model_path, device="cpu", settings=SETTINGS))
    rows = caption_clips(engine, frame, prompts, StateStore(str(tmp_path)), "baseline", video=fetch, log=_quiet)
    assert engine.asked == [clips[0]]
    assert rows.loc[0, "caption_error"] is None or pd.isna(rows.loc[0, "caption_error"])
    assert rows.loc[1, "caption_error"].startswith("video not fetched:") and "gone.mp4" in rows.loc[1, "caption_error"]
    assert len(_cached(tmp_path)) == 1


def test_field_failures_count_missing_and_invalid_per_field():
    from avdag.core.captioning.caption_cache import field_failures
    from avdag.core.common.labels import FIELDS

    ok = dict.fromkeys(FIELDS, "ok")
    statuses = [
        ok,
        {**ok, "weather": "invalid: 'Sunny' is not one of the allowed values"},
        {**ok, "weather": "missing"},
        {**ok, "weather": "invalid: 'Sunny' is not one of the allowed values", "lighting": "invalid: x"},
    ]
    table = field_failures(pd.DataFrame({"field_status": [json.dumps(s) for s in statuses]})).set_index("field")
    assert table.loc["weather"].to_dict() == {
        "ok": 1,
        "missing": 1,
        "invalid": 2,
        "commonest_problem": "invalid: 'Sunny' is not one of the allowed values",
    }
    assert table.loc["lighting", "invalid"] == 1 and table.loc["driving_difficulty", "ok"] == 4
    assert list(table.index) == list(FIELDS)


def test_a_cached_caption_still_names_the_run_that_computed_it(tiny_model_path, clips, prompts, tmp_path):
    engine = VlmCaptioner(tiny_model_path, device="cpu", settings=SETTINGS)
    frame = _clip_frame(clips[:1])
    store = StateStore(str(tmp_path))
    first = caption_clips(engine, frame, prompts, store, "baseline", video=_in_place, log=_quiet, run_id="run-1")
    again = caption_clips(engine, frame, prompts, store, "baseline", video=_in_place, log=_quiet, run_id="run-2")
    assert first["caption_run_id"].tolist() == ["run-1"] and not first["cached"].any()
    assert again["caption_run_id"].tolist() == ["run-1"] and again["cached"].all()
