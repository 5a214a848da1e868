"""A deterministic paraphraser of human answers: the "right answer, other words" side of judge calibration.

A judge that only rewards identical strings, or that cannot tell a reworded right answer from a
wrong one, is useless for scoring a captioning model. Calibration therefore needs answers that
mean the same as the human's but are spelled differently. This module writes them without a
model: free text gets driving-vocabulary synonyms, number words <-> digits and clause reordering;
a multiple-choice value gets another surface form of the same canonical value (case, hyphen, a
string for a number); a metaaction list is reordered and re-cased. The output always differs from
the input as a string (for free text, case-insensitively too), and is a pure function of it.
"""

from __future__ import annotations

import re
from typing import Any

from avdag.core.common.labels import BOOLEAN_FIELDS, CATEGORICAL_FIELDS, normalize_text

# Phrase -> replacement, matched case-insensitively on word boundaries in one pass (longest phrase
# first), so a replacement is never rewritten again. Each keeps the meaning in a dashcam label.
SYNONYMS: dict[str, str] = {
    "ego vehicle": "ego car",
    "traffic lights": "traffic signals",
    "traffic light": "traffic signal",
    "traffic signs": "road signs",
    "traffic sign": "road sign",
    "signal": "light",
    "intersections": "junctions",
    "intersection": "junction",
    "junctions": "intersections",
    "junction": "intersection",
    "asphalt": "tarmac",
    "pavement": "road surface",
    "in each direction": "in both directions",
    "each direction": "either direction",
    "no turn lanes": "no turning lanes",
    "pedestrians": "people on foot",
    "pedestrian": "person on foot",
    "pedestrian crosswalk": "crossing for pedestrians",
    "pedestrian crossing": "crosswalk",
    "crosswalk": "pedestrian crossing",
    "stands on the right": "is posted on the right-hand side",
    "separate the lanes": "divide the lanes",
    "discouraged": "not advised",
    "sign gantry": "sign bridge",
    "at the start of": "at the beginning of",
    "mph": "miles per hour",
    "dashed": "broken",
    "no debris": "free of debris",
    "highway": "motorway",
    "freeway": "expressway",
    "median": "central divider",
    "puddles": "pools of water",
    "visible": "in view",
    "slows down": "decelerates",
    "slows": "decelerates",
    "brakes": "applies the brakes",
    "drives": "travels",
    "keeps its": "maintains its",
    "keeps a": "maintains a",
    "about": "roughly",
    "car ahead": "vehicle ahead",
    "car in front": "vehicle in front",
    "street": "road",
    "dense": "thick",
    "clear skies": "a cloudless sky",
    "streetlights": "street lamps",
    "two-way": "bidirectional",
    "multi-lane": "multilane",
    "right of way": "priority",
    "stop line": "stop bar",
    "visibility": "sight distance",
}
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
_WORD_TO_DIGIT = {word: str(number) for number, word in enumerate(NUMBER_WORDS)}
_DIGIT_TO_WORD = {digit: word for word, digit in _WORD_TO_DIGIT.items()}

_PHRASES = sorted(SYNONYMS, key=len, reverse=True)
# Not inside a hyphenated word: "pedestrian-crossing" stays as it is.
_PHRASE_RE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(p) for p in _PHRASES) + r")(?![\w-])", re.IGNORECASE)
# A number word or a small integer (0-12) standing alone ("Four lanes", "4-lane", "2 lanes"), not part of "40 mph".
_NUMBER_RE = re.compile(r"(?<![\w.])(" + "|".join(NUMBER_WORDS) + r"|1[0-2]|\d)(?![\w.]|\.\d)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MIN_CLAUSE_WORDS = 3
# A clause opening with one of these leans on the one before it: swapping them would change the sense.
_LINKING_WORDS = frozenset({"and", "so", "yet", "but", "or", "which", "while", "then", "as", "because", "that"})


def _same_case(template: str, text: str) -> str:
    """`text` capitalised like the first letter of `template`."""
    if template[:1].isupper():
        return text[:1].upper() + text[1:]
    return text


def _swap_phrases(text: str) -> str:
    return _PHRASE_RE.sub(lambda m: _same_case(m.group(0), SYNONYMS[m.group(0).casefold()]), text)


def _swap_numbers(text: str) -> str:
    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.isdigit():
            return _DIGIT_TO_WORD[token]
        return _WORD_TO_DIGIT[token.casefold()]

    return _NUMBER_RE.sub(swap, text)


def _reorder_clauses(sentence: str) -> str:
    """'A b c, d e f.' -> 'D e f, a b c.' when both comma clauses are long enough to stand alone."""
    body, end = (sentence[:-1], sentence[-1]) if sentence[-1:] in ".!?" else (sentence, "")
    clauses = [c.strip() for c in body.split(", ")]
    if ";" in body or len(clauses) != 2 or min(len(c.split()) for c in clauses) < _MIN_CLAUSE_WORDS:
        return sentence
    first, second = clauses
    if second.split()[0].casefold() in _LINKING_WORDS:
        return sentence
    opening = first.split()[0]
    if not (len(opening) > 1 and opening.isupper()):  # keep an acronym's capitals
        first = first[:1].lower() + first[1:]
    return f"{second[:1].upper()}{second[1:]}, {first}{end}"


def _reorder_sentences(sentences: list[str]) -> list[str]:
    """The first sentence moved to the end: a label's setting, events and hazard read in any order."""
    return sentences[1:] + sentences[:1] if len(sentences) > 1 else sentences


def paraphrase_text(text: str) -> str:
    """The same content in other words; always differs from `text` case-insensitively."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [text.strip()]
    sentences = [s for line in lines for s in _SENTENCE_END.split(line) if s]
    rewritten = [_reorder_clauses(_swap_numbers(_swap_phrases(s))) for s in sentences]
    out = " ".join(_reorder_sentences(rewritten))
    if normalize_text(out).casefold() == normalize_text(text).casefold():
        out = f"As seen: {out[:1].lower()}{out[1:]}" if out else "Nothing to report."
    return out


def _other_case(text: str) -> str:
    return text.upper() if text == text.lower() else text.lower()


def paraphrase_answer(field: str, value: Any) -> Any:
    """A paraphrase of one human answer: same canonical value or meaning, another surface form.

    Multiple-choice: the value re-cased ("Clear skies" -> "clear skies"), booleans as lower-case
    strings, a difficulty as its digit string, so the judge must canonicalise, not compare strings.
    A metaaction list is reversed and lower-cased; absent answers swap None <-> "N/A".
    """
    if field in CATEGORICAL_FIELDS or field in BOOLEAN_FIELDS:
        text = value if isinstance(value, str) else str(value)
        return _other_case(text)
    if field == "driving_difficulty":
        return str(value) if isinstance(value, int) else value
    if field == "interactive_expanded_metaaction":
        if not value:
            return [] if value is None else None
        return [_other_case(entry) for entry in reversed(value)]
    if value is None:
        return "N/A"
    if isinstance(value, str) and normalize_text(value).casefold() in ("n/a", "na", "none", "null", ""):
        return None
    return paraphrase_text(value)
