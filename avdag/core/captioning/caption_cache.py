"""Caption every clip of a batch, resumably: one cached result file per clip and caption identity.

A caption's identity is (clip content hash, model hash, prompt hash, generation settings): the
same identity is never computed twice, so a killed run resumes where it stopped and a re-run
costs nothing. Each result is written atomically, so there are no torn files. The cache lives in
the state store (`CAPTION_CACHE`), so a run on another node reuses it too, and a video is fetched
onto the node only for a clip the cache lacks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from avdag.core.captioning.answers import parse_answer
from avdag.core.captioning.model import CaptionOutput, CaptionSource, GenerationSettings
from avdag.core.common.labels import FIELDS
from avdag.core.common.state_store import StateStore

CAPTION_CACHE = "cache/captions"  # state-store prefix of the cached results, one <caption key>.json each

CAPTION_COLUMNS = (
    "clip_id",
    "batch",
    "clip_sha256",
    "caption_source",
    "model_path",
    "model_hash",
    "prompt_hash",
    "generation",
    "raw_text",
    "parsed_json",
    "parse_error",
    "repaired",
    "fields_ok",
    "field_status",
    "prompt_tokens",
    "video_tokens",
    "new_tokens",
    "seconds",
    "cached",
    "caption_error",
    "answer_field",
    "caption_key",
    "caption_run_id",
)


class Captioner(Protocol):
    """Any captioning backend: the local engine or an OpenAI-compatible server.

    `caption_stream` yields (index into `video_paths`, output) as each clip finishes, in any
    order, exactly once per index; a clip that fails yields an output with `error` set rather
    than raising, so the rest of the batch goes on.
    """

    model_path: str
    model_hash: str
    settings: GenerationSettings

    def caption_stream(
        self, video_paths: Sequence[str], system_prompt: str, user_prompt: str
    ) -> Iterator[tuple[int, CaptionOutput]]: ...


Log = Callable[[str], None]
VideoFetch = Callable[[str, str], str | Path]  # (source URL, sha256) -> a local file with the clip's bytes


def caption_key(clip_sha256: str, model_hash: str, prompt_hash: str, settings: GenerationSettings) -> str:
    payload = json.dumps([clip_sha256, model_hash, prompt_hash, settings.fingerprint()])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cache_entry(key: str) -> str:
    """The state-store key of one cached caption."""
    return f"{CAPTION_CACHE}/{key}.json"


def caption_clips(
    captioner: Captioner,
    clips: pd.DataFrame,
    prompts,
    store: StateStore,
    caption_source: CaptionSource,
    *,
    video: VideoFetch,
    log: Log = print,
    run_id: str | None = None,
) -> pd.DataFrame:
    """One row per clip (CAPTION_COLUMNS); computes only what the cache in `store` lacks.

    `video(source_url, sha256)` puts a clip's video on this node; it is called for uncached clips only.

    `run_id` (the Dagster run) is stored with each newly computed answer, so a cached caption
    still names the run that produced it.

    Each answer is cached the moment it arrives, so a run killed mid-batch loses at most the
    batch in flight. A clip that fails gets a row with its error and is retried on the next run.
    """
    keys = [caption_key(sha, captioner.model_hash, prompts.caption_hash, captioner.settings) for sha in clips["sha256"]]
    stored = store.read_many(cache_entry(key) for key in set(keys))
    records: dict[int, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        cached = _parse_cached(stored.get(cache_entry(key)))
        if cached is not None:
            records[i] = {**cached, "cached": True}
    todo = [i for i in range(len(keys)) if i not in records]
    if todo:
        log(f"[{caption_source}] {len(records)}/{len(keys)} clips cached; captioning {len(todo)}")
    progress = _Progress(caption_source, len(todo), log)
    fetched, paths, unfetched = [], [], []
    for i in todo:
        try:
            paths.append(str(video(clips["source_url"].iloc[i], clips["sha256"].iloc[i])))
            fetched.append(i)
        except (OSError, ValueError) as error:  # a video that cannot be fetched (or differs) fails its clip alone
            unfetched.append((i, CaptionOutput("", 0, 0, 0, 0.0, error=f"video not fetched: {error}")))
    streamed = captioner.caption_stream(paths, prompts.system_prompt, prompts.user_prompt)
    for i, out in itertools.chain(unfetched, ((fetched[position], out) for position, out in streamed)):
        record = {
            "raw_text": out.raw_text,
            "prompt_tokens": out.prompt_tokens,
            "video_tokens": out.video_tokens,
            "new_tokens": out.new_tokens,
            "seconds": out.seconds,
            "answer_field": out.answer_field,
            "clip_id": clips["clip_id"].iloc[i],
            "run_id": run_id,
        }
        if out.error is None:
            store.write_json(cache_entry(keys[i]), record)
        records[i] = {**record, "cached": False, "error": out.error}
        progress.done(record["clip_id"], out)
    rows = [
        _row(clip, records[i], keys[i], captioner, prompts, caption_source)
        for i, clip in enumerate(clips.itertuples(index=False))
    ]
    return pd.DataFrame(rows, columns=CAPTION_COLUMNS)


class _Progress:
    """Logs each finished clip with throughput and an ETA for the rest."""

    def __init__(self, source: str, total: int, log: Log):
        self.source, self.total, self.log = source, total, log
        self.finished, self.tokens, self.started = 0, 0, time.perf_counter()

    def done(self, clip_id: str, out: CaptionOutput) -> None:
        self.finished += 1
        self.tokens += out.new_tokens
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.finished * (self.total - self.finished)
        what = f"FAILED: {out.error}" if out.error else f"{out.new_tokens} tokens"
        self.log(
            f"[{self.source}] {self.finished}/{self.total} {clip_id}: {what}; "
            f"{self.finished / elapsed:.2f} clips/s, {self.tokens / elapsed:.0f} tokens/s; ETA {eta:.0f}s"
        )


def _parse_cached(data: bytes | None) -> dict[str, Any] | None:
    try:
        return json.loads(data.decode("utf-8")) if data is not None else None
    except ValueError:
        return None


def _row(clip, record, key, captioner: Captioner, prompts, caption_source: CaptionSource) -> dict[str, Any]:
    error = record.get("error")
    parsed = parse_answer(record["raw_text"])
    return {
        "clip_id": clip.clip_id,
        "batch": clip.batch,
        "clip_sha256": clip.sha256,
        "caption_source": caption_source,
        "model_path": captioner.model_path,
        "model_hash": captioner.model_hash,
        "prompt_hash": prompts.caption_hash,
        "generation": captioner.settings.fingerprint(),
        "raw_text": record["raw_text"],
        "parsed_json": json.dumps(parsed.data, ensure_ascii=False) if parsed.ok else None,
        "parse_error": f"not captioned: {error}" if error else parsed.error,
        "repaired": parsed.repaired,
        "fields_ok": sum(v == "ok" for v in parsed.field_status.values()),
        "field_status": json.dumps(parsed.field_status),
        "prompt_tokens": record["prompt_tokens"],
        "video_tokens": record["video_tokens"],
        "new_tokens": record["new_tokens"],
        "seconds": record["seconds"],
        "cached": record["cached"],
        "caption_error": error,
        "answer_field": record.get("answer_field"),
        "caption_key": key,
        "caption_run_id": record.get("run_id"),
    }


def field_failures(frame: pd.DataFrame) -> pd.DataFrame:
    """Per rubric field: how many answers had it ok, missing, or invalid (with the commonest reason)."""
    statuses = [json.loads(s) for s in frame["field_status"]]
    rows = []
    for name in FIELDS:
        values = [s.get(name, "missing") for s in statuses]
        invalid = [v for v in values if v.startswith("invalid")]
        rows.append(
            {
                "field": name,
                "ok": values.count("ok"),
                "missing": values.count("missing"),
                "invalid": len(invalid),
                "commonest_problem": max(set(invalid), key=invalid.count) if invalid else "",
            }
        )
    return pd.DataFrame(rows)
