"""Caption quality before the judge is paid: answers cut at the token cap, empty, looping, or rambling.

cosmos-curate reports such text checks beside its captions; here they sit beside the parse table,
per source (baseline, fine-tuned), so a model that rambles or loops is visible from the captions
alone. Each is a flag per caption:

- `hit_token_cap`: generation stopped at `max_new_tokens` (from the caption's generation
  settings), so the answer is most likely cut off mid-object;
- `empty`: nothing but whitespace came back (a caption that failed is `not_captioned` instead);
- `repetitive`: at least REPETITIVE_RATIO of its word REPEAT_NGRAM-grams repeat an earlier one
  (a model stuck in a loop; a well-formed 15-field answer has almost none);
- `longer_than_label`: more than LONG_FACTOR times the words of the clip's human label (the
  answer is the same rubric as the label, so its length is a fair yardstick).

Rates are over captioned clips (`longer_than_label`: over captioned clips with a label).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import pandas as pd

REPEAT_NGRAM = 4
REPETITIVE_RATIO = 0.3
LONG_FACTOR = 3.0
FLAGS = ("hit_token_cap", "empty", "repetitive", "longer_than_label")
_WORD = re.compile(r"\w+")


def words(text: str | None) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore); JSON punctuation is not a word."""
    return _WORD.findall(text.casefold()) if isinstance(text, str) else []


def repeated_ngram_ratio(text: str | None, n: int = REPEAT_NGRAM) -> float:
    """Share of the text's word n-grams that already occurred earlier in it (0 for fewer than n words)."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def caption_flags(captions: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per caption: batch, clip_id, caption_source, the FLAGS, repeat_ratio and length_ratio.

    `captions` has the caption table's columns (raw_text, new_tokens, generation, caption_error);
    `labels`, optional, has batch, clip_id and label_json (raw_clips): without it, or for an
    unlabelled clip, length_ratio is NaN and `longer_than_label` False.
    """
    frame = captions[["batch", "clip_id", "caption_source"]].reset_index(drop=True)
    raw = captions["raw_text"].reset_index(drop=True)
    captioned = captions["caption_error"].isna().reset_index(drop=True)
    cap = captions["generation"].map(_max_new_tokens).reset_index(drop=True)
    new_tokens = pd.to_numeric(captions["new_tokens"]).reset_index(drop=True)
    label_words = _label_words(frame, labels)
    answer_words = raw.map(lambda text: len(words(text)))
    frame["captioned"] = captioned
    frame["new_tokens"] = new_tokens
    frame["hit_token_cap"] = captioned & cap.notna() & (new_tokens >= cap)
    frame["empty"] = captioned & raw.map(lambda text: not (isinstance(text, str) and text.strip()))
    frame["repeat_ratio"] = raw.map(repeated_ngram_ratio)
    frame["repetitive"] = captioned & (frame["repeat_ratio"] >= REPETITIVE_RATIO)
    frame["length_ratio"] = (answer_words / label_words).where(label_words > 0)
    frame["longer_than_label"] = captioned & (frame["length_ratio"] > LONG_FACTOR)
    return frame


def caption_quality(
    captions: pd.DataFrame, labels: pd.DataFrame | None = None, sources: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per caption source: clips, not_captioned, each flag's count and rate, and typical sizes.

    `sources` fixes the rows (a source with no captions gets a row of zeros); default: the sources
    present, in order of appearance.
    """
    flags = caption_flags(captions, labels) if len(captions) else None
    if sources is None:
        sources = list(pd.unique(captions["caption_source"])) if len(captions) else []
    rows = []
    for source in sources:
        mine = flags[flags["caption_source"] == source] if flags is not None else None
        rows.append(_source_row(source, mine))
    return pd.DataFrame(rows)


def _source_row(source: str, flags: pd.DataFrame | None) -> dict:
    row: dict = {"source": source, "clips": 0 if flags is None else len(flags)}
    captioned = flags[flags["captioned"]] if flags is not None else pd.DataFrame(columns=["length_ratio", *FLAGS])
    labelled = captioned["length_ratio"].notna()
    row["not_captioned"] = row["clips"] - len(captioned)
    for flag in FLAGS:
        count = int(captioned[flag].sum())
        denominator = int(labelled.sum()) if flag == "longer_than_label" else len(captioned)
        row[flag] = count
        row[f"{flag}_rate"] = count / denominator if denominator else math.nan
    row["mean_new_tokens"] = float(captioned["new_tokens"].mean()) if len(captioned) else math.nan
    row["mean_repeat_ratio"] = float(captioned["repeat_ratio"].mean()) if len(captioned) else math.nan
    row["median_length_ratio"] = float(captioned["length_ratio"].median()) if labelled.any() else math.nan
    return row


def caption_quality_markdown(table: pd.DataFrame) -> str:
    """The per-source table as Markdown: counts with rates, for asset metadata and the report."""
    if table.empty:
        return "no captions"
    shown = pd.DataFrame({"source": table["source"], "clips": table["clips"], "not captioned": table["not_captioned"]})
    titles = {
        "hit_token_cap": "hit token cap",
        "empty": "empty",
        "repetitive": f"repetitive ({REPEAT_NGRAM}-grams >= {REPETITIVE_RATIO:.0%})",
        "longer_than_label": f"> {LONG_FACTOR:g}x label length",
    }
    for flag, title in titles.items():
        shown[title] = [f"{count} ({_percent(rate)})" for count, rate in zip(table[flag], table[f"{flag}_rate"])]
    shown["mean new tokens"] = table["mean_new_tokens"].round(1)
    shown["median length / label"] = table["median_length_ratio"].round(2)
    return shown.to_markdown(index=False)


def _percent(rate: float) -> str:
    return "n/a" if rate != rate else f"{rate:.0%}"


def _max_new_tokens(generation) -> float:
    try:
        return float(json.loads(generation)["max_new_tokens"])
    except (TypeError, ValueError, KeyError):
        return math.nan


def _label_words(frame: pd.DataFrame, labels: pd.DataFrame | None) -> pd.Series:
    """Word count of each caption's human label (NaN when there is none)."""
    if labels is None or labels.empty:
        return pd.Series(math.nan, index=frame.index)
    counts = labels[["batch", "clip_id"]].assign(
        label_words=[len(words(text)) if isinstance(text, str) else math.nan for text in labels["label_json"]]
    )
    merged = frame[["batch", "clip_id"]].merge(counts.drop_duplicates(["batch", "clip_id"]), how="left")
    return merged["label_words"].astype(float).set_axis(frame.index)
