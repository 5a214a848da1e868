"""Judge the captions of the eval clips: one row per (clip, question), with its lineage.

Every row names the clip (id, content hash, source URL, batch), the caption (source, model
hash, prompt hash, generation settings, cache key) and the judge (id, prompt hash, raw reply),
so any score can be traced back to what produced it.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import pandas as pd

from avdag.core.scoring import plan_judge_items

SCORE_COLUMNS = (
    "clip_id", "batch", "clip_sha256", "source_url", "caption_source", "model_path", "model_hash",
    "caption_prompt_hash", "generation", "caption_key", "field", "question", "human_answer",
    "model_answer", "score", "judge_reply", "judge_error", "judge_id", "judge_prompt_hash",
)


def score_captions(
    judge, prompts, eval_clips: pd.DataFrame, captions: pd.DataFrame, log: Callable[[str], None] = print
) -> pd.DataFrame:
    """Score every eval clip's caption against its human label, question by question."""
    by_clip = captions.set_index("clip_id")
    rows = []
    started = time.perf_counter()
    for n, clip in enumerate(eval_clips.itertuples(index=False), start=1):
        if clip.clip_id not in by_clip.index:
            raise KeyError(f"no caption for eval clip {clip.clip_id}")
        caption = by_clip.loc[clip.clip_id]
        label = json.loads(clip.label_json)
        answer = json.loads(caption.parsed_json) if isinstance(caption.parsed_json, str) else None
        items, skipped = plan_judge_items(label, answer, prompts.questions)
        verdicts = dict(zip((i.field for i in items), judge.judge(items)))
        lineage = {
            "clip_id": clip.clip_id, "batch": clip.batch, "clip_sha256": clip.sha256, "source_url": clip.source_url,
            "caption_source": caption.caption_source, "model_path": caption.model_path, "model_hash": caption.model_hash,
            "caption_prompt_hash": caption.prompt_hash, "generation": caption.generation, "caption_key": caption.caption_key,
            "judge_id": judge.judge_id, "judge_prompt_hash": prompts.judge_hash,
        }
        for field, question in prompts.questions.items():
            verdict = verdicts.get(field)
            rows.append({
                **lineage,
                "field": field,
                "question": question,
                "human_answer": json.dumps(label.get(field), ensure_ascii=False),
                "model_answer": json.dumps(answer.get(field), ensure_ascii=False) if answer and field in answer else None,
                "score": verdict.score if verdict else None,
                "judge_reply": verdict.reply if verdict else skipped[field],
                "judge_error": verdict.error if verdict else None,
            })
        log(f"judged {n}/{len(eval_clips)} {clip.clip_id} in {time.perf_counter() - started:.1f}s")
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    frame["score"] = frame["score"].astype("Int64")
    return frame
