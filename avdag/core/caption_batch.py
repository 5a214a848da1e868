"""Caption every clip of a batch, resumably: one cached result file per clip and caption identity.

A caption's identity is (clip content hash, model hash, prompt hash, generation settings): the
same identity is never computed twice, so a killed run resumes where it stopped and a re-run
costs nothing. Each result is written atomically, so there are no torn files.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import pandas as pd

from avdag.core.answers import parse_answer
from avdag.core.atomic import write_json_atomic
from avdag.core.captioning import CaptionOutput, GenerationSettings

CAPTION_COLUMNS = (
    "clip_id", "batch", "clip_sha256", "caption_source", "model_path", "model_hash", "prompt_hash",
    "generation", "raw_text", "parsed_json", "parse_error", "repaired", "fields_ok", "field_status",
    "prompt_tokens", "video_tokens", "new_tokens", "seconds", "cached", "caption_key",
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


def caption_key(clip_sha256: str, model_hash: str, prompt_hash: str, settings: GenerationSettings) -> str:
    payload = json.dumps([clip_sha256, model_hash, prompt_hash, settings.fingerprint()])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def caption_clips(
    captioner: Captioner,
    clips: pd.DataFrame,
    prompts,
    cache_dir: Path,
    caption_source: str,
    log: Log = print,
) -> pd.DataFrame:
    """One row per clip (CAPTION_COLUMNS); computes only what the cache lacks."""
    keys = [caption_key(sha, captioner.model_hash, prompts.caption_hash, captioner.settings) for sha in clips["sha256"]]
    pending = sum(not (cache_dir / f"{key}.json").exists() for key in keys)
    rows, started, computed = [], time.perf_counter(), 0
    for i, (clip, key) in enumerate(zip(clips.itertuples(index=False), keys), start=1):
        path = cache_dir / f"{key}.json"
        record = _read_cached(path)
        cached = record is not None
        if record is None:
            out = captioner.caption(clip.local_path, prompts.system_prompt, prompts.user_prompt)
            record = {"raw_text": out.raw_text, "prompt_tokens": out.prompt_tokens, "video_tokens": out.video_tokens,
                      "new_tokens": out.new_tokens, "seconds": out.seconds, "clip_id": clip.clip_id}
            write_json_atomic(path, record)
            computed += 1
            eta = (time.perf_counter() - started) / computed * max(0, pending - computed)
            log(f"[{caption_source}] {i}/{len(clips)} {clip.clip_id}: {out.new_tokens} tokens in {out.seconds:.1f}s; ETA {eta:.0f}s")
        rows.append(_row(clip, record, key, cached, captioner, prompts, caption_source))
    return pd.DataFrame(rows, columns=CAPTION_COLUMNS)


def _read_cached(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _row(clip, record, key, cached, captioner: Captioner, prompts, caption_source: str) -> dict[str, Any]:
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
        "parse_error": parsed.error,
        "repaired": parsed.repaired,
        "fields_ok": sum(v == "ok" for v in parsed.field_status.values()),
        "field_status": json.dumps(parsed.field_status),
        "prompt_tokens": record["prompt_tokens"],
        "video_tokens": record["video_tokens"],
        "new_tokens": record["new_tokens"],
        "seconds": record["seconds"],
        "cached": cached,
        "caption_key": key,
    }
