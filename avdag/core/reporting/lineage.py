"""The chain behind one score, from upload to judge: what `avdag lineage` prints.

Every link is found by what the score row recorded (its batch, clip hash, caption key, model
path and hash), never by "the latest" file: a re-caption overwrites the batch's caption table and
a retrain rewrites `sft_checkpoint.json`, but the caption cache keeps each caption under its key
and each checkpoint has its own folder. What is stored now is compared with the row, and every
section says "matches the score row" or what differs. Read from the files avdag writes under
$AVDAG_HOME, so it works without a running Dagster instance and shows exactly what is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from avdag.core.captioning.answers import parse_answer
from avdag.core.captioning.caption_cache import caption_key
from avdag.core.captioning.model import CaptionSource
from avdag.core.common.model_identity import model_fingerprint

SOURCES = ("baseline", "finetuned")
MATCHES = "matches the score row"
MISMATCH = "MISMATCH: "
TRAINING_RECORD = "avdag_training.json"  # what the trainers write into each checkpoint folder
_UPLOAD_COLUMNS = ("batch", "source_url", "sha256", "duration_s", "width", "height", "fps", "codec", "size_bytes")
_SCORE_COLUMNS = (
    "batch",
    "field",
    "question",
    "human_answer",
    "model_answer",
    "score",
    "judge_error",
    "judge_id",
    "judge_prompt_hash",
    "judge_reply",
    "cached",
    "score_run_id",
)


class LineageError(LookupError):
    """The score asked for does not exist, or is not one score; the message says what does."""


@dataclass
class Lineage:
    clip_id: str
    field: str
    source: CaptionSource
    batch: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mismatched(self) -> list[str]:
        """Sections whose stored files differ from what the score row recorded."""
        return [name for name, values in self.sections.items() if str(values.get("check", "")).startswith(MISMATCH)]


def score_lineage(
    home: Path, clip_id: str, question: str, source: CaptionSource = "finetuned", batch: str | None = None
) -> Lineage:
    """Upload → split → caption → checkpoint (or base model) → score, for one clip, question and batch.

    `home` is $AVDAG_HOME (assets, caption cache, checkpoints). `batch` is needed only when the
    clip id was scored in several batches.
    """
    if source not in SOURCES:
        raise LineageError(f"source must be one of {SOURCES}, got {source!r}")
    home = Path(home)
    assets = home / "assets"
    score = _score_row(assets, clip_id, question, source, batch)
    lineage = Lineage(clip_id, score["field"], source, score["batch"])
    lineage.sections["upload"] = _upload(assets, score)
    lineage.sections["split"] = _split(assets, score)
    lineage.sections["caption"] = _caption(home, assets, score, source)
    if source == "finetuned":
        lineage.sections["checkpoint"] = _checkpoint(home, assets, score)
    else:
        lineage.sections["model"] = _base_model(score)
    lineage.sections["score"] = {
        "check": "the row every section above is checked against",
        **{k: score.get(k) for k in _SCORE_COLUMNS},
    }
    return lineage


def _score_row(assets: Path, clip_id: str, question: str, source: CaptionSource, batch: str | None) -> dict[str, Any]:
    scores = _rows(assets / f"{source}_judge_scores", clip_id)
    if scores.empty:
        raise LineageError(
            f"no {source} score for clip {clip_id!r}: it is not an eval clip, or its batch has not been scored"
        )
    batches = sorted(set(scores["batch"]))
    if batch is not None:
        scores = scores[scores["batch"] == batch]
        if scores.empty:
            raise LineageError(
                f"no {source} score for clip {clip_id!r} in batch {batch!r}; it was scored in: {', '.join(batches)}"
            )
    elif len(batches) > 1:
        raise LineageError(
            f"clip {clip_id!r} has {source} scores in {len(batches)} batches: {', '.join(batches)}; "
            "name one with --batch"
        )
    return _pick_question(scores, question)


def _rows(folder: Path, clip_id: str) -> pd.DataFrame:
    frames = [pd.read_parquet(path) for path in sorted(folder.glob("*.parquet"))]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[table["clip_id"] == clip_id]


def _pick_question(scores: pd.DataFrame, question: str) -> dict[str, Any]:
    """A field name ('weather') or words of the question text select one question."""
    wanted = question.strip().lower()
    exact = scores[scores["field"].str.lower() == wanted]
    matches = exact if len(exact) else scores[scores["question"].str.lower().str.contains(wanted, regex=False)]
    if len(matches) != 1:
        what = "no question matches" if matches.empty else f"{len(matches)} questions match"
        raise LineageError(f"{what} {question!r}; fields: {', '.join(scores['field'])}")
    return {k: _plain(v) for k, v in matches.iloc[0].items()}


def _upload(assets: Path, score: dict[str, Any]) -> dict[str, Any]:
    path = assets / "raw_clips" / f"{score['batch']}.parquet"
    row, missing = _stored_row(path, score["clip_id"])
    if row is None:
        return _checked({}, [missing])
    values = {k: row[k] for k in _UPLOAD_COLUMNS if k in row}
    problems = _differences(row, {"sha256": score["clip_sha256"], "source_url": score["source_url"]})
    if "sha256" in row and row["sha256"] != score["clip_sha256"]:
        problems.append("the batch was re-ingested with other content since this score")
    return _checked(values, problems)


def _split(assets: Path, score: dict[str, Any]) -> dict[str, Any]:
    row, missing = _stored_row(assets / "clip_splits" / f"{score['batch']}.parquet", score["clip_id"])
    if row is None:
        return _checked({}, [missing])
    recorded = {"split": "eval"}  # only eval clips are scored
    if "sha256" in row:
        recorded["sha256"] = score["clip_sha256"]
    return _checked({k: row[k] for k in ("split", "sha256") if k in row}, _differences(row, recorded))


def _caption(home: Path, assets: Path, score: dict[str, Any], source: CaptionSource) -> dict[str, Any]:
    """The judged caption, by its key: from the caption cache, else the batch's table if it still holds it."""
    key = score["caption_key"]
    values: dict[str, Any] = {
        "caption_key": key,
        "caption_source": score["caption_source"],
        "model_path": score["model_path"],
        "model_hash": score["model_hash"],
        "prompt_hash": score["caption_prompt_hash"],
        "generation": score["generation"],
    }
    problems = []
    identity = caption_key(
        score["clip_sha256"], score["model_hash"], score["caption_prompt_hash"], _Recorded(score["generation"])
    )
    if identity != key:
        problems.append(f"caption key {key} is not the key of the recorded clip, model, prompt and generation")
    cache_file = home / "cache" / "captions" / f"{key}.json"
    table_path = assets / f"{source}_captions" / f"{score['batch']}.parquet"
    table_row, table_missing = _stored_row(table_path, score["clip_id"])
    in_table = table_row if table_row is not None and table_row.get("caption_key") == key else None
    record = _read_json(cache_file)
    if record is not None:
        values.update(
            found_in=str(cache_file),
            caption_run_id=record.get("run_id"),
            new_tokens=record.get("new_tokens"),
            caption_error=None,  # failed captions are never cached
            raw_text=record.get("raw_text"),
        )
    elif in_table is not None:
        values.update(
            found_in=str(table_path),
            caption_run_id=in_table.get("caption_run_id"),
            new_tokens=in_table.get("new_tokens"),
            caption_error=in_table.get("caption_error"),
            raw_text=in_table.get("raw_text"),
        )
    else:
        problems.append(f"no caption with key {key}: not in the caption cache ({cache_file}), nor in {table_path}")
    if isinstance(values.get("raw_text"), str):
        parsed = parse_answer(values["raw_text"])
        values["parse_error"] = parsed.error
        values["field_status"] = parsed.field_status.get(score["field"])
        answer = _judged_answer(parsed.data, score["field"])
        if answer != score["model_answer"]:
            judged = score["model_answer"]
            problems.append(f"this caption answers {score['field']} {answer}, the score row judged {judged}")
    if table_row is None:
        values["now_in_table"] = f"nothing ({table_missing})"
    elif in_table is not None:
        values["now_in_table"] = "this caption"
    else:
        values["now_in_table"] = (
            f"another caption (differs: re-captioned since this score): key {table_row.get('caption_key')}, "
            f"model {table_row.get('model_hash')}, run {table_row.get('caption_run_id')}"
        )
    return _checked(values, problems)


class _Recorded:
    """The generation settings as the row recorded them (their fingerprint), for `caption_key`."""

    def __init__(self, fingerprint: str):
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        return self._fingerprint


def _judged_answer(data: dict[str, Any] | None, field_name: str) -> str | None:
    """The model answer scoring takes from a parsed caption (see score_captions)."""
    return json.dumps(data[field_name], ensure_ascii=False) if data and field_name in data else None


def _checkpoint(home: Path, assets: Path, score: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint folder the caption's model_path names, its weights hashed against the row's model_hash."""
    if not score.get("model_path"):
        return _checked({}, ["the score row recorded no model path"])
    recorded = Path(score["model_path"])
    folder = recorded if recorded.is_dir() else home / "checkpoints" / recorded.name
    values: dict[str, Any] = {"checkpoint_id": folder.name.removeprefix("sft-"), "path": str(folder)}
    if not folder.is_dir():
        return _checked(values, [f"no checkpoint folder at {recorded} (nor in {home / 'checkpoints'})"])
    if folder != recorded:
        values["note"] = f"the score row recorded {recorded}; found by name under {home}"
    problems = []
    try:
        values["weights_hash"] = model_fingerprint(str(folder))
    except FileNotFoundError as error:
        values["weights_hash"] = None
        problems.append(str(error))
    if values["weights_hash"] and values["weights_hash"] != score["model_hash"]:
        problems.append(
            f"the weights in {folder} hash to {values['weights_hash']}, the judged caption was made by "
            f"{score['model_hash']}: the folder was overwritten since"
        )
    record = _read_json(folder / TRAINING_RECORD)
    if record is None:
        problems.append(f"no {TRAINING_RECORD} in {folder}")
    else:
        losses = record.get("losses") or []
        values.update(
            trainer=record.get("trainer", "embedded"),
            base_model=record.get("base_model"),
            train_clips=len(record.get("examples") or []),
            settings=record.get("settings"),
            final_loss=losses[-1][1] if losses else None,
            train_seconds=record.get("seconds"),
        )
    values["now_in_service"] = _now(assets / "checkpoint_in_service.json", score["model_hash"])
    values["latest_trained"] = _now(assets / "sft_checkpoint.json", score["model_hash"])
    return _checked(values, problems)


def _now(path: Path, model_hash: str) -> str:
    """Context only: which checkpoint a 'latest' record names now, and whether it is this one."""
    info = _read_json(path)
    if not info:
        return f"none ({path} does not exist)"
    same = info.get("weights_hash") == model_hash
    return f"{info.get('checkpoint_id')} ({'this checkpoint' if same else 'differs'})"


def _base_model(score: dict[str, Any]) -> dict[str, Any]:
    """The base model the baseline caption names; a local folder's weights are hashed against the row."""
    path = score["model_path"]
    values: dict[str, Any] = {"model_path": path}
    if not path:
        return _checked(values, ["the score row recorded no model path"])
    if Path(path).is_absolute() and not Path(path).exists():
        return _checked(values, [f"no model folder at {path}"])
    try:
        values["model_hash"] = model_fingerprint(path)
    except FileNotFoundError as error:
        return _checked(values, [str(error)])
    return _checked(values, _differences(values, {"model_hash": score["model_hash"]}))


def _stored_row(path: Path, clip_id: str) -> tuple[dict[str, Any] | None, str]:
    """(the clip's row in a per-batch table, or None and why not)."""
    if not path.exists():
        return None, f"{path} does not exist"
    table = pd.read_parquet(path)
    rows = table[table["clip_id"] == clip_id]
    if rows.empty:
        return None, f"{clip_id} is not in {path}"
    return {k: _plain(v) for k, v in rows.iloc[0].items()}, ""


def _differences(stored: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    return [
        f"{key} is {stored.get(key)!r} now, the score row recorded {value!r}"
        for key, value in recorded.items()
        if stored.get(key) != value
    ]


def _checked(values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    return {"check": MISMATCH + "; ".join(problems) if problems else MATCHES, **values}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """numpy/pandas scalars → Python values (for JSON and printing); NA → None."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def format_lineage(lineage: Lineage, *, text_limit: int = 400) -> str:
    """Readable chain, one section per step with its check, long texts shortened."""
    lines = [
        f"lineage of the {lineage.source} score for clip {lineage.clip_id} in batch {lineage.batch}, "
        f"question {lineage.field}"
    ]
    for name, values in lineage.sections.items():
        lines.append(f"\n[{name}] {values.get('check', '')}")
        for key, value in values.items():
            if key == "check":
                continue
            text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
            if len(text) > text_limit:
                text = text[:text_limit] + f"… ({len(text)} chars)"
            lines.append(f"  {key:<18} {text}")
    mismatched = lineage.mismatched
    lines.append(
        f"\nWARNING: differs from what the score recorded: {', '.join(mismatched)}"
        if mismatched
        else "\nevery section matches the score row"
    )
    return "\n".join(lines)
