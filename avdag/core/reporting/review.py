"""The review page's content: each clip with its frames, its label, both models' answers and the judge.

A mean per question says a model got worse, not where or why. A reviewer needs the clip beside
every answer: the sampled frames, the human label, the baseline and fine-tuned answers field by
field, each field's judge score and reply, and whether an answer failed to parse or looped. This
module builds those rows from the stored tables (no Dagster), filters them with the catalog's query
language plus a few review terms, and exports them as JSON and CSV; `review_page` renders the HTML.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from avdag.core.captioning.caption_quality import FLAGS as QUALITY_FLAGS
from avdag.core.captioning.caption_quality import caption_flags
from avdag.core.common.labels import (
    BOOLEAN_FIELDS,
    CATEGORICAL_FIELDS,
    FIELDS,
    METAACTIONS,
    canonical_boolean,
    canonical_choice,
    normalize_text,
)
from avdag.core.reporting import catalog
from avdag.core.reporting.statistics import strict_scores

SOURCES = catalog.CAPTION_SOURCES  # the two caption sources, as the catalog names them
# Columns the review adds to the catalog's for filtering; the query language is the catalog's.
REVIEW_COLUMNS: dict[str, tuple[str, str]] = {
    "min_score": ("DOUBLE", "number"),
    "fields_worse": ("INTEGER", "number"),
    "fields_disagree": ("INTEGER", "number"),
    "parse_failed": ("BOOLEAN", "bool"),
    "labelled": ("BOOLEAN", "bool"),
}
REVIEW_FLAGS = {
    **catalog.FLAGS,
    "worse": "fields_worse > 0",
    "disagree": "fields_disagree > 0",
    "parse_failed": "parse_failed IS TRUE",
    "scored": "min_score IS NOT NULL",
}
# Flag -> (boolean or number column, what makes it true): the page's script evaluates flags from this.
FLAG_COLUMNS = {
    "pedestrians": ("has_pedestrians", True),
    "traffic_light": ("has_traffic_light", True),
    "night": ("is_night", True),
    "interesting": ("is_interesting", True),
    "violation": ("rule_violation_flag", True),
    "labelled": ("labelled", True),
    "labeled": ("labelled", True),
    "unlabelled": ("labelled", False),
    "unlabeled": ("labelled", False),
    "worse": ("fields_worse", "positive"),
    "disagree": ("fields_disagree", "positive"),
    "parse_failed": ("parse_failed", True),
    "scored": ("min_score", "present"),
}
QUERY_COLUMNS = {**catalog.COLUMNS, catalog.SEARCH_TEXT: ("VARCHAR", "text"), **REVIEW_COLUMNS}
CSV_COLUMNS = (
    "batch",
    "clip_id",
    "split",
    "field",
    "human_answer",
    "baseline_answer",
    "finetuned_answer",
    "baseline_score",
    "finetuned_score",
    "baseline_strict_score",
    "finetuned_strict_score",
    "baseline_judge_reply",
    "finetuned_judge_reply",
    "baseline_field_status",
    "finetuned_field_status",
    "worse",
    "disagree",
    "baseline_quality",
    "finetuned_quality",
)
FRAME_COUNT = 4
FRAME_WIDTH = 160

VideoFetch = Callable[[str, str], "str | Path"]  # (source URL, sha256) -> a local file with the clip's bytes


# ----------------------------------------------------------------------------- rows


def review_rows(
    clips: pd.DataFrame,
    splits: pd.DataFrame,
    captions: pd.DataFrame,
    scores: pd.DataFrame,
    *,
    questions: Mapping[str, str] | None = None,
    frames: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """One review row per (batch, clip_id) of `clips`, ordered by batch and clip id.

    `splits` has clip_id and split (batch and sha256 when known); `captions` the caption table's
    columns for both sources; `scores` the judge score rows of both sources. A fine-tuned score is
    joined only to the caption of the model it judged (its model_hash), so a batch re-captioned
    since its scoring shows the new answer without the old score. `frames` maps (batch, clip_id) to
    the clip's thumbnails as data URIs.
    """
    clip_rows = _records(clips)
    caption_by = {(r["batch"], r["clip_id"], r["caption_source"]): r for r in _records(captions)}
    flags_by = _quality_flags(captions, clips)
    scores_by: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    if scores is not None and len(scores):
        # as the comparison counts: no answer = 1, a failed judgement left out
        scores = scores.assign(strict_score=strict_scores(scores))
    for r in _records(scores):
        scores_by.setdefault((r["batch"], r["clip_id"], r["caption_source"]), {}).setdefault(r["field"], r)
    split_by = _split_by(_records(splits))
    catalog_by = _catalog_by(clips, splits, captions)
    rows = []
    for clip in sorted(clip_rows, key=lambda c: (str(c["batch"]), str(c["clip_id"]))):
        key = (clip["batch"], clip["clip_id"])
        label = _json_object(clip.get("label_json"))
        sides = {}
        for source in SOURCES:
            caption = caption_by.get((*key, source))
            judged = scores_by.get((*key, source), {})
            if caption is not None and source == "finetuned":
                judged = {f: r for f, r in judged.items() if r.get("model_hash") in (None, caption.get("model_hash"))}
            sides[source] = _side(caption, judged, flags_by.get((*key, source), []))
        fields = [_field_row(name, (questions or {}).get(name), label, sides) for name in FIELDS]
        rows.append(
            _clip_row(clip, split_by, label, sides, fields, catalog_by.get(key, {}), (frames or {}).get(key, []))
        )
    return rows


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None or len(frame) == 0:
        return []
    return [{k: catalog._plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _json_object(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _split_by(splits: list[dict[str, Any]]) -> dict[tuple[str | None, str], str]:
    """(batch, clip_id) and (None, clip_id) -> split; a batch's own row wins over another batch's."""
    found: dict[tuple[str | None, str], str] = {}
    for row in splits:
        found[(row.get("batch"), row["clip_id"])] = row["split"]
        found.setdefault((None, row["clip_id"]), row["split"])
    return found


def _quality_flags(captions: pd.DataFrame, clips: pd.DataFrame) -> dict[tuple[str, str, str], list[str]]:
    if captions is None or len(captions) == 0:
        return {}
    flags = caption_flags(captions, clips if "label_json" in clips.columns else None)
    out = {}
    for row in flags.to_dict("records"):
        raised = [name for name in QUALITY_FLAGS if bool(row[name])]
        if not row["captioned"]:
            raised.insert(0, "not_captioned")
        out[(row["batch"], row["clip_id"], row["caption_source"])] = raised
    return out


def _catalog_by(clips: pd.DataFrame, splits: pd.DataFrame, captions: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """The catalog's searchable columns per (batch, clip_id), built batch by batch (a clip id may repeat)."""
    out: dict[tuple[str, str], dict] = {}
    if clips is None or len(clips) == 0:
        return out
    for batch, group in clips.groupby("batch", sort=True):
        mine = splits
        if splits is not None and "batch" in splits.columns:
            mine = splits[splits["batch"] == batch]
        caps = captions[captions["batch"] == batch] if captions is not None and len(captions) else captions
        table = catalog.catalog_rows(group, mine, caps)
        for row in _records(table):
            out[(str(batch), row["clip_id"])] = row
    return out


def _side(caption: dict[str, Any] | None, judged: dict[str, dict[str, Any]], quality: list[str]) -> dict[str, Any]:
    if caption is None:
        return {"captioned": False, "answer": None, "status": {}, "scores": judged, "quality": []}
    return {
        "captioned": True,
        "answer": _json_object(caption.get("parsed_json")),
        "parse_error": caption.get("parse_error"),
        "status": _json_object(caption.get("field_status")) or {},
        "model_hash": caption.get("model_hash"),
        "raw_text": caption.get("raw_text"),
        "scores": judged,
        "quality": quality,
    }


def _field_row(name: str, question: str | None, label: dict | None, sides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"field": name, "question": question, "human": (label or {}).get(name)}
    for source in SOURCES:
        side = sides[source]
        answer = side["answer"]
        judged = side["scores"].get(name)
        row[source] = answer.get(name) if answer else None
        row[f"{source}_status"] = (
            (side["status"].get(name, "missing") if answer is not None else "not parsed")
            if side["captioned"]
            else "no caption"
        )
        row[f"{source}_score"] = _number(judged.get("score")) if judged else None
        row[f"{source}_strict_score"] = _number(judged.get("strict_score")) if judged else None
        row[f"{source}_reply"] = (judged.get("judge_error") or judged.get("judge_reply")) if judged else None
    base, tuned = row["baseline_strict_score"], row["finetuned_strict_score"]
    row["worse"] = base is not None and tuned is not None and tuned < base
    both = sides["baseline"]["answer"] is not None and sides["finetuned"]["answer"] is not None
    row["disagree"] = both and not same_answer(name, row["baseline"], row["finetuned"])
    return row


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def same_answer(field: str, a: Any, b: Any) -> bool:
    """Whether two answers to one field say the same: canonical values for closed sets, folded text otherwise."""
    return _answer_key(field, a) == _answer_key(field, b)


def _answer_key(field: str, value: Any) -> Any:
    if value is None:
        return None
    if field == "interactive_expanded_metaaction":
        items = value if isinstance(value, list) else [value]
        return frozenset(canonical_choice(v, METAACTIONS) or _fold(v) for v in items if v is not None)
    if field == "driving_difficulty":
        return catalog._int_or_none(value)
    if field in CATEGORICAL_FIELDS:
        return canonical_choice(value, CATEGORICAL_FIELDS[field]) or _fold(value)
    if field in BOOLEAN_FIELDS:
        return canonical_boolean(value) or _fold(value)
    key = _fold(value)
    return None if key in ("", "n/a", "na", "none", "null") else key


def _fold(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return normalize_text(text).rstrip(".").casefold()


def _clip_row(clip, split_by, label, sides, fields, catalog_row, frames) -> dict[str, Any]:
    tuned = [f["finetuned_strict_score"] for f in fields if f["finetuned_strict_score"] is not None]
    base = [f["baseline_strict_score"] for f in fields if f["baseline_strict_score"] is not None]
    parse_failed = {
        source: sides[source]["captioned"]
        and (sides[source]["answer"] is None or any(f[f"{source}_status"] != "ok" for f in fields))
        for source in SOURCES
    }
    searchable = {name: catalog_row.get(name) for name in (*catalog.COLUMNS, catalog.SEARCH_TEXT)}
    searchable.update(
        clip_id=clip["clip_id"],
        batch=clip["batch"],
        split=split_by.get((clip["batch"], clip["clip_id"]), split_by.get((None, clip["clip_id"]))),
    )
    summary = {
        "min_score": min(tuned or base) if (tuned or base) else None,
        "finetuned_mean": sum(tuned) / len(tuned) if tuned else None,
        "baseline_mean": sum(base) / len(base) if base else None,
        "fields_worse": sum(f["worse"] for f in fields),
        "fields_disagree": sum(f["disagree"] for f in fields),
        "parse_failed": any(parse_failed.values()),
        "labelled": label is not None,
    }
    return {
        "batch": clip["batch"],
        "clip_id": clip["clip_id"],
        "split": searchable["split"],
        "sha256": clip.get("sha256"),
        "source_url": clip.get("source_url"),
        "human_label": label,
        **summary,
        "sources": {
            source: {
                "captioned": sides[source]["captioned"],
                "parsed": sides[source]["answer"] is not None,
                "parse_failed": parse_failed[source],
                "parse_error": sides[source].get("parse_error"),
                "quality": sides[source]["quality"],
                "model_hash": sides[source].get("model_hash"),
            }
            for source in SOURCES
        },
        "fields": fields,
        "catalog": {**searchable, **summary},
        "frames": list(frames),
    }


# ----------------------------------------------------------------------------- filter and order


def filter_rows(rows: Sequence[dict[str, Any]], query: str | Sequence[str] = "") -> list[dict[str, Any]]:
    """The rows matching `query` in the catalog's language (plus worse, disagree, parse_failed, scored,
    min_score<n ...), evaluated by DuckDB exactly as `avdag search` evaluates it; order kept."""
    if not query or (not isinstance(query, str) and not any(query)):
        return list(rows)
    where, params = catalog.parse_query(query, columns=QUERY_COLUMNS, flags=REVIEW_FLAGS)
    table = pd.DataFrame(
        [{name: row["catalog"].get(name) for name in QUERY_COLUMNS} for row in rows],
        columns=list(QUERY_COLUMNS),
        dtype=object,
    )
    with duckdb.connect() as conn:
        catalog.create_table(conn, table, QUERY_COLUMNS, ("batch", "clip_id"))
        keys = set(conn.execute(f"SELECT batch, clip_id FROM {catalog.TABLE} WHERE {where}", params).fetchall())
    return [row for row in rows if (row["batch"], row["clip_id"]) in keys]


def worst_first(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lowest judge score first (no answer = 1, as the comparison counts), then the most fields made
    worse; unjudged clips last."""
    return sorted(
        rows,
        key=lambda r: (
            r["min_score"] is None,
            r["min_score"] if r["min_score"] is not None else 0,
            -r["fields_worse"],
            r["finetuned_mean"] if r["finetuned_mean"] is not None else 0,
            r["batch"],
            r["clip_id"],
        ),
    )


# ----------------------------------------------------------------------------- exports


def export_json(rows: Sequence[dict[str, Any]], title: str) -> bytes:
    """Every row without its thumbnails (those live in the page and in frames.json)."""
    bare = [{k: v for k, v in r.items() if k != "frames"} for r in rows]
    payload = {"title": title, "clips": len(rows), "rows": bare}
    return (json.dumps(payload, indent=1, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def csv_records(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per clip and field (CSV_COLUMNS); answers JSON-encoded as the score rows write them."""
    out = []
    for row in rows:
        for f in row["fields"]:
            out.append(
                {
                    "batch": row["batch"],
                    "clip_id": row["clip_id"],
                    "split": row["split"],
                    "field": f["field"],
                    "human_answer": _json_text(f["human"]),
                    "baseline_answer": _json_text(f["baseline"]),
                    "finetuned_answer": _json_text(f["finetuned"]),
                    "baseline_score": f["baseline_score"],
                    "finetuned_score": f["finetuned_score"],
                    "baseline_strict_score": f["baseline_strict_score"],
                    "finetuned_strict_score": f["finetuned_strict_score"],
                    "baseline_judge_reply": f["baseline_reply"],
                    "finetuned_judge_reply": f["finetuned_reply"],
                    "baseline_field_status": f["baseline_status"],
                    "finetuned_field_status": f["finetuned_status"],
                    "worse": f["worse"],
                    "disagree": f["disagree"],
                    "baseline_quality": " ".join(row["sources"]["baseline"]["quality"]),
                    "finetuned_quality": " ".join(row["sources"]["finetuned"]["quality"]),
                }
            )
    return out


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False)


def export_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in csv_records(rows):
        writer.writerow({k: csv_cell(v) for k, v in record.items()})
    return buffer.getvalue().encode("utf-8")


def csv_cell(value: Any) -> str:
    """The text both exports (Python here, the page's script) write: integers without '.0', booleans lower-case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def frames_json(rows: Sequence[dict[str, Any]]) -> bytes:
    """(batch/clip_id) -> thumbnails, so `avdag review` rebuilds the page without fetching videos again."""
    return json.dumps({f"{r['batch']}/{r['clip_id']}": r["frames"] for r in rows}).encode("utf-8")


def with_frames(rows: Sequence[dict[str, Any]], stored: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    return [{**r, "frames": list(stored.get(f"{r['batch']}/{r['clip_id']}", []))} for r in rows]


def worst_markdown(rows: Sequence[dict[str, Any]], limit: int = 10) -> str:
    """The lowest-scored clips as a Markdown table for the asset's metadata."""
    scored = [r for r in worst_first(rows) if r["min_score"] is not None]
    header = (
        "| clip | batch | split | lowest score | fine-tuned mean | baseline mean | fields worse | disagree | parse |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in scored[:limit]:
        worse = ", ".join(f["field"] for f in r["fields"] if f["worse"]) or "-"
        lines.append(
            f"| {r['clip_id']} | {r['batch']} | {r['split']} | {_fmt(r['min_score'])} | {_fmt(r['finetuned_mean'])} | "
            f"{_fmt(r['baseline_mean'])} | {worse} | {r['fields_disagree']} | "
            f"{'failed' if r['parse_failed'] else 'ok'} |"
        )
    if not scored:
        return f"no judged clips among {len(rows)} (only eval clips are judged)\n"
    return f"{len(scored)} judged of {len(rows)} clips; worst {min(limit, len(scored))}:\n\n" + "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ----------------------------------------------------------------------------- frames


def frame_strip(path: str | Path, count: int = FRAME_COUNT, width: int = FRAME_WIDTH) -> list[str]:
    """`count` evenly spaced frames of the clip, as the captioner samples them, as small JPEG data URIs."""
    from PIL import Image

    from avdag.core.ingest.video import sample_frames

    sampled = sample_frames(path, fps=1.0)
    frames = sampled.frames
    total = int(frames.shape[0])
    picks = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(min(count, total))})
    uris = []
    for index in picks:
        pixels = frames[index].clamp(0, 255).byte().permute(1, 2, 0).numpy()
        image = Image.fromarray(pixels)
        height = max(1, round(image.height * width / image.width))
        image = image.resize((width, height))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=75)
        uris.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return uris


def clip_frames(
    clips: pd.DataFrame, video: VideoFetch, log: Callable[[str], None] = print
) -> dict[tuple[str, str], list[str]]:
    """Thumbnails per (batch, clip_id), each video fetched through `video` (the state store, checked by
    sha256); a clip that cannot be read gets none and a log line, never a failed review."""
    out = {}
    for clip in _records(clips):
        key = (clip["batch"], clip["clip_id"])
        try:
            out[key] = frame_strip(video(clip["source_url"], clip["sha256"]))
        except Exception as error:  # noqa: BLE001 - one unreadable clip must not stop the review
            log(f"no frames for {key[0]}/{key[1]}: {error}")
            out[key] = []
    return out


# ----------------------------------------------------------------------------- stored files

EVAL_REVIEW = "eval"  # the name of the eval split's review, beside the batches' names


def review_keys(name: str) -> dict[str, str]:
    """State-store keys of one review (a batch's, or EVAL_REVIEW): the page and its exports."""
    folder = "reviews/eval" if name == EVAL_REVIEW else f"reviews/batches/{name}"
    return {
        "html": f"{folder}/review.html",
        "json": f"{folder}/review.json",
        "csv": f"{folder}/review.csv",
        "frames": f"{folder}/frames.json",
    }


def publish_review(store, name: str, rows: Sequence[dict[str, Any]], title: str, subtitle: str = "") -> dict[str, str]:
    """Write the page, JSON, CSV and thumbnails to the state store, the page last; returns the keys."""
    from avdag.core.reporting.review_page import review_page

    keys = review_keys(name)
    store.write_bytes(keys["json"], export_json(rows, title))
    store.write_bytes(keys["csv"], export_csv(rows))
    store.write_bytes(keys["frames"], frames_json(rows))
    store.write_bytes(keys["html"], review_page(rows, title, subtitle=subtitle).encode("utf-8"))
    return keys


def load_review(store, name: str) -> tuple[str, list[dict[str, Any]]]:
    """(title, rows with thumbnails) of a stored review; FileNotFoundError names the asset to materialize."""
    keys = review_keys(name)
    if not store.exists(keys["json"]):
        asset = "eval_review" if name == EVAL_REVIEW else f"batch_review (partition {name})"
        raise FileNotFoundError(f"no review at {store.uri(keys['json'])}; materialize {asset}")
    stored = store.read_json(keys["json"])
    frames = store.read_json(keys["frames"]) if store.exists(keys["frames"]) else {}
    return stored["title"], with_frames(stored["rows"], frames)
