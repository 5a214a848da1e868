"""The chain behind one score, from upload to judge: what `avdag lineage` prints.

Read from the asset files avdag writes under $AVDAG_HOME/assets (Parquet per batch, JSON for the
checkpoint), so it works without a running Dagster instance and shows exactly what is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from avdag.core.captioning.model import CaptionSource

SOURCES = ("baseline", "finetuned")


class LineageError(LookupError):
    """The score asked for does not exist; the message says what does."""


@dataclass
class Lineage:
    clip_id: str
    field: str
    source: CaptionSource
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


def score_lineage(assets_dir: Path, clip_id: str, question: str, source: CaptionSource = "finetuned") -> Lineage:
    """Upload → split → caption (→ checkpoint) → score for one clip and question."""
    if source not in SOURCES:
        raise LineageError(f"source must be one of {SOURCES}, got {source!r}")
    scores = _rows(assets_dir / f"{source}_judge_scores", "clip_id", clip_id)
    if scores.empty:
        raise LineageError(
            f"no {source} score for clip {clip_id!r}: it is not an eval clip, or its batch has not been scored"
        )
    score = _pick_question(scores, question)
    batch = score["batch"]
    lineage = Lineage(clip_id, score["field"], source)
    lineage.sections["upload"] = _one(
        assets_dir / "raw_clips" / f"{batch}.parquet",
        clip_id,
        ["batch", "source_url", "sha256", "duration_s", "width", "height", "fps", "codec", "size_bytes"],
    )
    lineage.sections["split"] = _one(assets_dir / "clip_splits" / f"{batch}.parquet", clip_id, ["split"])
    caption = _one(
        assets_dir / f"{source}_captions" / f"{batch}.parquet",
        clip_id,
        [
            "caption_source",
            "model_path",
            "model_hash",
            "prompt_hash",
            "generation",
            "caption_key",
            "caption_run_id",
            "cached",
            "caption_error",
            "parse_error",
            "field_status",
            "raw_text",
        ],
    )
    caption["field_status"] = (
        json.loads(caption["field_status"]).get(score["field"]) if caption.get("field_status") else None
    )
    lineage.sections["caption"] = caption
    if source == "finetuned":
        lineage.sections["checkpoint"] = _checkpoint(assets_dir / "sft_checkpoint.json")
    lineage.sections["score"] = {
        k: score.get(k)
        for k in (
            "field",
            "question",
            "human_answer",
            "model_answer",
            "score",
            "judge_error",
            "judge_id",
            "judge_prompt_hash",
            "judge_reply",
            "score_run_id",
        )
    }
    return lineage


def _rows(folder: Path, column: str, value: str) -> pd.DataFrame:
    frames = [pd.read_parquet(path) for path in sorted(folder.glob("*.parquet"))]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[table[column] == value]


def _pick_question(scores: pd.DataFrame, question: str) -> dict[str, Any]:
    """A field name ('weather') or words of the question text select one question."""
    wanted = question.strip().lower()
    exact = scores[scores["field"].str.lower() == wanted]
    matches = exact if len(exact) else scores[scores["question"].str.lower().str.contains(wanted, regex=False)]
    if len(matches) != 1:
        what = "no question matches" if matches.empty else f"{len(matches)} questions match"
        raise LineageError(f"{what} {question!r}; fields: {', '.join(scores['field'])}")
    return {k: _plain(v) for k, v in matches.iloc[0].items()}


def _one(path: Path, clip_id: str, columns: list[str]) -> dict[str, Any]:
    if not path.exists():
        return {"missing": str(path)}
    table = pd.read_parquet(path)
    row = table[table["clip_id"] == clip_id]
    if row.empty:
        return {"missing": f"{clip_id} not in {path}"}
    return {c: _plain(row.iloc[0][c]) for c in columns if c in row.columns}


def _checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"missing": str(path)}
    info = json.loads(path.read_text())
    losses = info.get("losses") or []
    return {
        "checkpoint_id": info.get("checkpoint_id"),
        "path": info.get("path"),
        "weights_hash": info.get("weights_hash"),
        "base_model": info.get("base_model"),
        "base_model_hash": info.get("base_model_hash"),
        "prompt_hash": info.get("prompt_hash"),
        "train_clips": len(info.get("train_clips", [])),
        "settings": info.get("settings"),
        "final_loss": losses[-1][1] if losses else None,
    }


def _plain(value: Any) -> Any:
    """numpy/pandas scalars → Python values (for JSON and printing); NA → None."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def format_lineage(lineage: Lineage, *, text_limit: int = 400) -> str:
    """Readable chain, one section per step, long texts shortened."""
    lines = [f"lineage of the {lineage.source} score for clip {lineage.clip_id}, question {lineage.field}"]
    for name, values in lineage.sections.items():
        lines.append(f"\n[{name}]")
        for key, value in values.items():
            text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
            if len(text) > text_limit:
                text = text[:text_limit] + f"… ({len(text)} chars)"
            lines.append(f"  {key:<18} {text}")
    return "\n".join(lines)
