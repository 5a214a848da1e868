"""The chain behind one score, from upload to judge: what `avdag lineage` prints.

Every link is found by what the score row recorded (its batch, clip hash, caption key, model
path and hash), never by "the latest" file: a re-caption overwrites the batch's caption table and
a retrain rewrites `sft_checkpoint.json`, but the caption cache keeps each caption under its key
and each checkpoint has its own folder. What is stored now is compared with the row, and every
section says "matches the score row" or what differs. Read from the state store avdag writes
(AVDAG_STATE_URL), so it works from any machine that reaches it, without a running Dagster
instance, and shows exactly what is stored; a checkpoint is fetched into scratch to hash its weights.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from avdag.core.captioning.answers import parse_answer
from avdag.core.captioning.caption_cache import cache_entry, caption_key
from avdag.core.captioning.model import CaptionSource
from avdag.core.captioning.model_family import known_family
from avdag.core.common.model_identity import model_fingerprint, model_type
from avdag.core.common.state_store import ContentMismatchError, StateStore

SOURCES = ("baseline", "finetuned")
MATCHES = "matches the score row"
MISMATCH = "MISMATCH: "
TRAINING_RECORD = "avdag_training.json"  # what the trainers write into each checkpoint folder
CHECKPOINTS = "checkpoints"  # state-store prefix: one folder per checkpoint id
ASSETS = "assets"  # state-store prefix of the asset values (parquet_io, json_io)
_UPLOAD_COLUMNS = (
    "batch",
    "source_url",
    "sha256",
    "drive_id",  # a clip cut from a drive: which drive, and where in it
    "drive_url",
    "drive_start_s",
    "drive_end_s",
    "near_duplicate_of",
    "duration_s",
    "width",
    "height",
    "fps",
    "codec",
    "size_bytes",
)
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
    store: StateStore,
    scratch: str | Path,
    clip_id: str,
    question: str,
    source: CaptionSource = "finetuned",
    batch: str | None = None,
) -> Lineage:
    """Upload → split → caption → checkpoint (or base model) → score, for one clip, question and batch.

    `store` holds the assets, caption cache and checkpoints; model folders are fetched into
    `scratch` to be hashed. `batch` is needed only when the clip id was scored in several batches.
    """
    if source not in SOURCES:
        raise LineageError(f"source must be one of {SOURCES}, got {source!r}")
    score = _score_row(store, clip_id, question, source, batch)
    lineage = Lineage(clip_id, score["field"], source, score["batch"])
    lineage.sections["upload"] = _upload(store, score)
    lineage.sections["split"] = _split(store, score)
    lineage.sections["caption"] = _caption(store, score, source)
    if source == "finetuned":
        lineage.sections["checkpoint"] = _checkpoint(store, scratch, score)
    else:
        lineage.sections["model"] = _base_model(store, scratch, score)
    lineage.sections["score"] = {
        "check": "the row every section above is checked against",
        **{k: score.get(k) for k in _SCORE_COLUMNS},
    }
    return lineage


def _score_row(
    store: StateStore, clip_id: str, question: str, source: CaptionSource, batch: str | None
) -> dict[str, Any]:
    scores = _rows(store, f"{ASSETS}/{source}_judge_scores", clip_id)
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


def _rows(store: StateStore, prefix: str, clip_id: str) -> pd.DataFrame:
    tables = [key for key in store.list(prefix) if key.endswith(".parquet")]
    frames = [pd.read_parquet(io.BytesIO(data)) for _, data in sorted(store.read_many(tables).items())]
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


def _upload(store: StateStore, score: dict[str, Any]) -> dict[str, Any]:
    row, missing = _stored_row(store, f"{ASSETS}/raw_clips/{score['batch']}.parquet", score["clip_id"])
    if row is None:
        return _checked({}, [missing])
    # drive and near-duplicate columns are empty for a clip uploaded as a clip: left out, not shown as None
    values = {k: row[k] for k in _UPLOAD_COLUMNS if k in row and not _missing(row[k])}
    problems = _differences(row, {"sha256": score["clip_sha256"], "source_url": score["source_url"]})
    if "sha256" in row and row["sha256"] != score["clip_sha256"]:
        problems.append("the batch was re-ingested with other content since this score")
    return _checked(values, problems)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN


def _split(store: StateStore, score: dict[str, Any]) -> dict[str, Any]:
    row, missing = _stored_row(store, f"{ASSETS}/clip_splits/{score['batch']}.parquet", score["clip_id"])
    if row is None:
        return _checked({}, [missing])
    recorded = {"split": "eval"}  # only eval clips are scored
    if "sha256" in row:
        recorded["sha256"] = score["clip_sha256"]
    return _checked({k: row[k] for k in ("split", "sha256") if k in row}, _differences(row, recorded))


def _caption(store: StateStore, score: dict[str, Any], source: CaptionSource) -> dict[str, Any]:
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
    cache_file = cache_entry(key)
    table = f"{ASSETS}/{source}_captions/{score['batch']}.parquet"
    table_row, table_missing = _stored_row(store, table, score["clip_id"])
    in_table = table_row if table_row is not None and table_row.get("caption_key") == key else None
    record = _read_json(store, cache_file)
    if record is not None:
        values.update(
            found_in=store.uri(cache_file),
            caption_run_id=record.get("run_id"),
            new_tokens=record.get("new_tokens"),
            caption_error=None,  # failed captions are never cached
            raw_text=record.get("raw_text"),
        )
    elif in_table is not None:
        values.update(
            found_in=store.uri(table),
            caption_run_id=in_table.get("caption_run_id"),
            new_tokens=in_table.get("new_tokens"),
            caption_error=in_table.get("caption_error"),
            raw_text=in_table.get("raw_text"),
        )
    else:
        problems.append(
            f"no caption with key {key}: not in the caption cache ({store.uri(cache_file)}), nor in {store.uri(table)}"
        )
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


def _checkpoint(store: StateStore, scratch: str | Path, score: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint folder the caption's model_path names, its weights hashed against the row's model_hash."""
    recorded = score.get("model_path")
    if not recorded:
        return _checked({}, ["the score row recorded no model path"])
    key = store.key_of(recorded) or f"{CHECKPOINTS}/{PurePosixPath(recorded).name}"
    values: dict[str, Any] = {"checkpoint_id": PurePosixPath(key).name.removeprefix("sft-"), "path": store.uri(key)}
    if store.key_of(recorded) is None:
        values["note"] = f"the score row recorded {recorded}; found by name in {store.uri(CHECKPOINTS)}"
    if not store.is_complete(key):
        return _checked(
            values, [f"no complete checkpoint folder at {store.uri(key)} (the score row recorded {recorded})"]
        )
    problems = []
    try:
        values["weights_hash"] = model_fingerprint(str(store.fetch_folder(key, scratch)))
    except (FileNotFoundError, ContentMismatchError) as error:
        values["weights_hash"] = None
        problems.append(str(error))
    if values["weights_hash"] and values["weights_hash"] != score["model_hash"]:
        problems.append(
            f"the weights in {store.uri(key)} hash to {values['weights_hash']}, the judged caption was made by "
            f"{score['model_hash']}: the folder was overwritten since"
        )
    record = _read_json(store, f"{key}/{TRAINING_RECORD}")
    if record is None:
        problems.append(f"no {TRAINING_RECORD} in {store.uri(key)}")
    else:
        losses = record.get("losses") or []
        values.update(
            trainer=record.get("trainer", "embedded"),
            base_model=record.get("base_model"),
            base_family=record.get("base_family"),
            train_clips=len(record.get("examples") or []),
            settings=record.get("settings"),
            final_loss=losses[-1][1] if losses else None,
            train_seconds=record.get("seconds"),
        )
    values["now_in_service"] = _now(store, f"{ASSETS}/checkpoint_in_service.json", score["model_hash"])
    values["latest_trained"] = _now(store, f"{ASSETS}/sft_checkpoint.json", score["model_hash"])
    return _checked(values, problems)


def _now(store: StateStore, key: str, model_hash: str) -> str:
    """Context only: which checkpoint a 'latest' record names now, and whether it is this one."""
    info = _read_json(store, key)
    if not info:
        return f"none ({store.uri(key)} does not exist)"
    same = info.get("weights_hash") == model_hash
    return f"{info.get('checkpoint_id')} ({'this checkpoint' if same else 'differs'})"


def _base_model(store: StateStore, scratch: str | Path, score: dict[str, Any]) -> dict[str, Any]:
    """The base model the baseline caption names; a folder's weights (fetched when in the store) are hashed."""
    path = score["model_path"]
    values: dict[str, Any] = {"model_path": path}
    if not path:
        return _checked(values, ["the score row recorded no model path"])
    key = store.key_of(path)
    try:
        local = str(store.fetch_folder(key, scratch)) if key is not None else path
    except (FileNotFoundError, ContentMismatchError) as error:
        return _checked(values, [str(error)])
    if Path(local).is_absolute() and not Path(local).exists():
        return _checked(values, [f"no model folder at {path}"])
    try:
        values["model_hash"] = model_fingerprint(local)
    except FileNotFoundError as error:
        return _checked(values, [str(error)])
    known = known_family(path)
    values["family"] = model_type(local) or (known.name if known else None)
    return _checked(values, _differences(values, {"model_hash": score["model_hash"]}))


def _stored_row(store: StateStore, key: str, clip_id: str) -> tuple[dict[str, Any] | None, str]:
    """(the clip's row in a per-batch table, or None and why not)."""
    try:
        table = pd.read_parquet(io.BytesIO(store.read_bytes(key)))
    except FileNotFoundError:
        return None, f"{store.uri(key)} does not exist"
    rows = table[table["clip_id"] == clip_id]
    if rows.empty:
        return None, f"{clip_id} is not in {store.uri(key)}"
    return {k: _plain(v) for k, v in rows.iloc[0].items()}, ""


def _differences(stored: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    return [
        f"{key} is {stored.get(key)!r} now, the score row recorded {value!r}"
        for key, value in recorded.items()
        if stored.get(key) != value
    ]


def _checked(values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    return {"check": MISMATCH + "; ".join(problems) if problems else MATCHES, **values}


def _read_json(store: StateStore, key: str) -> Any:
    try:
        return store.read_json(key)
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
