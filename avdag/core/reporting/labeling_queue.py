"""What to label next: unlabelled clips ranked by how much a human label would teach the model.

Annotation is the expensive step, so the queue puts first the clips where a label is worth most:
- uncertainty: the models failed to answer (fields that did not parse) or the baseline and the
  fine-tuned model disagree (a clip the model has not settled on);
- diversity: the clip's answer is far from every labelled clip's label (MiniLM embeddings, the
  offline judge's model), so its label covers ground the training set does not;
- rarity: the models say it shows what few labelled clips show (night, rain/snow/fog,
  pedestrians, a rule violation, an interesting scenario).
score = 0.5 uncertainty + 0.25 diversity + 0.25 rarity, each in [0, 1]; every row says why.

A clip is unlabelled when ingest found no valid label for it (no label file, the landing zone's
way of uploading footage for auto-labelling, or a label that failed validation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from avdag.core.common.labels import FIELDS, MULTIPLE_CHOICE_FIELDS
from avdag.core.reporting import catalog
from avdag.core.reporting.review import same_answer

WEIGHTS = {"uncertainty": 0.5, "diversity": 0.25, "rarity": 0.25}
# Free-text answers whose embeddings are at least this close say the same thing (MiniLM cosine; the
# offline judge reads 0.70-0.85 as "same content, some details differ").
TEXT_AGREEMENT = 0.8
NO_TEXT_DIVERSITY = 0.5  # a clip with no answer to place is neither near nor far
FAR = 0.3  # diversity from which a clip is "far from labelled clips" in its reason
RARE_ATTRIBUTES = {
    "night": lambda flat, flags: bool(flags["is_night"]),
    "rain/snow/fog": lambda flat, flags: any(w in (flat["weather"] or "").lower() for w in ("rain", "snow", "fog")),
    "pedestrians": lambda flat, flags: bool(flags["has_pedestrians"]),
    "rule violation": lambda flat, flags: bool(flags["rule_violation_flag"]),
    "interesting": lambda flat, flags: bool(flags["is_interesting"]),
}
QUEUE_COLUMNS = (
    "rank",
    "batch",
    "clip_id",
    "score",
    "uncertainty",
    "parse_failure_share",
    "disagreement",
    "disagreeing_fields",
    "diversity",
    "rarity",
    "rare",
    "reason",
    "predicted_weather",
    "predicted_lighting",
    "source_url",
    "sha256",
)
Encode = Callable[[list[str]], np.ndarray]  # texts -> unit-norm embeddings, one row each


def labeling_queue(clips: pd.DataFrame, captions: pd.DataFrame, encode: Encode | None = None) -> pd.DataFrame:
    """The unlabelled clips of `clips` (raw_clips of every batch), best first (QUEUE_COLUMNS).

    `captions` holds both sources' caption rows of every batch. `encode` embeds texts (default:
    the offline judge's MiniLM, loaded only when there is an unlabelled clip to rank).
    """
    clip_rows = catalog._records(clips, ("clip_id", "batch", "label_json"), "clips")
    unlabelled = [c for c in clip_rows if c.get("label_json") is None]
    if not unlabelled:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    encode = encode or _default_encoder()
    labels = [flat for c in clip_rows if (flat := _flat(c.get("label_json"))) is not None]
    shares = _attribute_shares(labels)
    label_vectors = encode([_text(flat) for flat in labels]) if labels else np.zeros((0, 1))
    by_key = {
        (r["batch"], r["clip_id"], r["caption_source"]): r
        for r in catalog._records(captions, ("clip_id", "batch", "caption_source"), "captions")
    }
    rows = [_assess(clip, by_key, shares, encode) for clip in unlabelled]
    answers = [row.pop("_text") for row in rows]
    placed = [i for i, text in enumerate(answers) if text]
    for row in rows:
        row["diversity"] = NO_TEXT_DIVERSITY
    if placed:
        vectors = encode([answers[i] for i in placed])
        nearest = (vectors @ label_vectors.T).max(axis=1) if len(labels) else np.zeros(len(placed))
        for i, similarity in zip(placed, nearest):
            rows[i]["diversity"] = float(np.clip(1 - similarity, 0, 1)) if len(labels) else 1.0
            rows[i]["_nearest"] = float(similarity) if len(labels) else None
    for row in rows:
        row["score"] = round(sum(w * row[name] for name, w in WEIGHTS.items()), 4)
        row["reason"] = _reason(row)
        row.pop("_nearest", None)
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["score", "batch", "clip_id"], ascending=[False, True, True], kind="stable")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame[list(QUEUE_COLUMNS)].reset_index(drop=True)


def _default_encoder() -> Encode:
    from avdag.core.reporting.meaning import sentence_model

    model = sentence_model()
    return lambda texts: model.encode(
        list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def _flat(text: Any) -> dict[str, Any] | None:
    answer = catalog._json_object(text) if isinstance(text, str) else None
    return catalog.flatten_answer(answer) if answer is not None else None


def _text(flat: dict[str, Any]) -> str:
    return catalog.search_text(flat)


def _attributes(flat: dict[str, Any]) -> set[str]:
    flags = catalog.answer_flags(flat)
    return {name for name, test in RARE_ATTRIBUTES.items() if test(flat, flags)}


def _attribute_shares(labels: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Share of labelled clips showing each attribute (0 when nothing is labelled)."""
    counts = dict.fromkeys(RARE_ATTRIBUTES, 0)
    for flat in labels:
        for name in _attributes(flat):
            counts[name] += 1
    return {name: count / len(labels) if labels else 0.0 for name, count in counts.items()}


def _assess(clip: dict[str, Any], captions: dict, shares: dict[str, float], encode: Encode) -> dict[str, Any]:
    key = (clip["batch"], clip["clip_id"])
    sides = {source: captions.get((*key, source)) for source in catalog.CAPTION_SOURCES}
    answers = {s: _answer(c) for s, c in sides.items()}
    failures = [_parse_failure_share(c) for c in sides.values() if c is not None]
    parse_share = float(np.mean(failures)) if failures else 1.0
    disagreeing = _disagreeing_fields(answers.get("baseline"), answers.get("finetuned"), encode)
    both = answers.get("baseline") is not None and answers.get("finetuned") is not None
    disagreement = len(disagreeing) / len(FIELDS) if both else 0.0
    predicted = answers.get("finetuned") or answers.get("baseline")
    flat = catalog.flatten_answer(predicted) if predicted is not None else None
    rare = sorted(_attributes(flat), key=lambda name: shares[name]) if flat else []
    rarity = max((1 - shares[name] for name in rare), default=0.0)
    return {
        "batch": clip["batch"],
        "clip_id": clip["clip_id"],
        "uncertainty": max(parse_share, disagreement),
        "parse_failure_share": round(parse_share, 4),
        "disagreement": round(disagreement, 4),
        "disagreeing_fields": ", ".join(disagreeing),
        "rarity": round(rarity, 4),
        "rare": ", ".join(f"{name} ({shares[name]:.0%} of labelled)" for name in rare),
        "predicted_weather": flat["weather"] if flat else None,
        "predicted_lighting": flat["lighting"] if flat else None,
        "source_url": clip.get("source_url"),
        "sha256": clip.get("sha256"),
        "_text": _text(flat) if flat else "",
    }


def _answer(caption: dict[str, Any] | None) -> dict[str, Any] | None:
    return catalog._json_object(caption.get("parsed_json")) if caption else None


def _parse_failure_share(caption: dict[str, Any]) -> float:
    """Share of the 15 fields this caption did not answer validly (all of them when it did not parse)."""
    if caption.get("parsed_json") is None:
        return 1.0
    try:
        status = json.loads(caption.get("field_status") or "{}")
    except ValueError:
        status = {}
    return sum(status.get(field) != "ok" for field in FIELDS) / len(FIELDS)


def _disagreeing_fields(baseline: dict | None, finetuned: dict | None, encode: Encode) -> list[str]:
    """Fields both models answered differently: closed sets by canonical value, free text by meaning."""
    if baseline is None or finetuned is None:
        return []
    differ, texts = [], []
    for field in FIELDS:
        a, b = baseline.get(field), finetuned.get(field)
        if a is None and b is None:
            continue
        if a is None or b is None or field in MULTIPLE_CHOICE_FIELDS or field == "interactive_expanded_metaaction":
            if not same_answer(field, a, b):
                differ.append(field)
        elif not same_answer(field, a, b):
            texts.append((field, str(a), str(b)))
    if texts:
        vectors = encode([t for _, a, b in texts for t in (a, b)])
        for index, (field, _, _) in enumerate(texts):
            if float(vectors[2 * index] @ vectors[2 * index + 1]) < TEXT_AGREEMENT:
                differ.append(field)
    return [field for field in FIELDS if field in differ]


def _reason(row: dict[str, Any]) -> str:
    """Why the clip is where it is, its strongest reason first."""
    parts = []
    if row["parse_failure_share"] > 0:
        parts.append(
            (
                WEIGHTS["uncertainty"] * row["parse_failure_share"],
                f"{row['parse_failure_share']:.0%} of fields failed to parse",
            )
        )
    if row["disagreement"] > 0:
        parts.append(
            (
                WEIGHTS["uncertainty"] * row["disagreement"],
                f"baseline and fine-tuned disagree on {row['disagreeing_fields']}",
            )
        )
    if row.get("_nearest") is not None:
        near = "far from" if row["diversity"] >= FAR else "like"
        parts.append(
            (
                WEIGHTS["diversity"] * row["diversity"],
                f"{near} labelled clips (nearest similarity {row['_nearest']:.2f})",
            )
        )
    elif row["diversity"] == 1.0:
        parts.append((WEIGHTS["diversity"], "nothing labelled yet"))
    if row["rare"]:
        parts.append((WEIGHTS["rarity"] * row["rarity"], f"rare: {row['rare']}"))
    parts.sort(key=lambda part: -part[0])
    return "; ".join(text for _, text in parts) or "nothing stands out"


def queue_markdown(queue: pd.DataFrame, limit: int = 10) -> str:
    """The top of the queue as Markdown for the asset's metadata."""
    if queue.empty:
        return "no unlabelled clips\n"
    head = queue.head(limit)[["rank", "batch", "clip_id", "score", "reason"]]
    return f"{len(queue)} unlabelled clips; top {len(head)}:\n\n" + head.to_markdown(index=False) + "\n"
