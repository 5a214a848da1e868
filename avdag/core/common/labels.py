"""The 15-field annotation schema of the AV captioning recipe, and label validation.

One home for field names and allowed values so that validation, synthetic data, prompts,
answer parsing and scoring can never disagree about what a label is.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

WEATHER = (
    "Clear skies",
    "Overcast",
    "Partly cloudy",
    "Light rain",
    "Heavy rain",
    "Light snow",
    "Dense fog",
    "N/A",
)
LIGHTING = (
    "Daytime (diffused light)",
    "Daytime (low-contrast daylight)",
    "Daytime (direct sunlight)",
    "Night (poorly lit; few/no streetlights)",
    "Night (well-lit by streetlights)",
)
METAACTIONS = (
    "In-lane nudging",
    "Yield to VRUs",
    "Vehicle following",
    "Out-of-lane nudging",
    "Yield to vehicles",
    "Overtake VRUs",
    "Vehicle cut-in ahead",
    "React to animals",
    "Overtake vehicles",
)
BOOLEAN_STRINGS = ("True", "False")

# Field order as the rubric asks for them.
FIELDS = (
    "weather",
    "lighting",
    "road_conditions",
    "traffic_light",
    "traffic_sign",
    "additional_traffic_rules",
    "road_type",
    "junction_type",
    "lane_type",
    "additional_map_rules",
    "interactive_expanded_metaaction",
    "safety_analysis",
    "driving_difficulty",
    "rule_violation",
    "interesting_scenario",
)
FIELD_COUNT = len(FIELDS)
TEXT_FIELDS = (
    "road_conditions",
    "traffic_light",
    "traffic_sign",
    "road_type",
    "junction_type",
    "lane_type",
    "safety_analysis",
)
NULLABLE_TEXT_FIELDS = ("additional_traffic_rules", "additional_map_rules")
CATEGORICAL_FIELDS = {"weather": WEATHER, "lighting": LIGHTING}
BOOLEAN_FIELDS = ("rule_violation", "interesting_scenario")
# Fields with a closed answer set: exact accuracy is meaningful for these.
MULTIPLE_CHOICE_FIELDS = ("weather", "lighting", "driving_difficulty", "rule_violation", "interesting_scenario")

# Labels in the wild use typographic hyphens (the recipe's own example has U+2011).
_HYPHENS = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2212"), "-")


def normalize_text(value: str) -> str:
    """Fold unicode look-alikes and whitespace so 'low‑contrast' equals 'low-contrast'."""
    return " ".join(unicodedata.normalize("NFKC", value).translate(_HYPHENS).split())


def canonical_choice(value: Any, choices: tuple[str, ...]) -> str | None:
    """The allowed value `value` spells (case/hyphen/space-insensitive), or None."""
    if not isinstance(value, str):
        return None
    key = normalize_text(value).casefold()
    for choice in choices:
        if normalize_text(choice).casefold() == key:
            return choice
    return None


def canonical_boolean(value: Any) -> str | None:
    """'True'/'False' as the recipe writes them, accepting JSON booleans too."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return canonical_choice(value, BOOLEAN_STRINGS)


@dataclass(frozen=True)
class LabelIssue:
    """One reason a label is not usable, naming the field so a person can fix the file."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def validate_label(label: Any) -> list[LabelIssue]:
    """Every way `label` departs from the rubric (empty list = valid)."""
    if not isinstance(label, dict):
        return [LabelIssue("<root>", f"expected a JSON object, got {type(label).__name__}")]
    issues: list[LabelIssue] = []
    for field in FIELDS:
        if field not in label:
            issues.append(LabelIssue(field, "missing"))
    for field, value in label.items():
        if field not in FIELDS:
            continue
        issue = field_issue(field, value)
        if issue:
            issues.append(LabelIssue(field, issue))
    return issues


def field_issue(field: str, value: Any) -> str | None:
    if field in CATEGORICAL_FIELDS:
        if canonical_choice(value, CATEGORICAL_FIELDS[field]) is None:
            return f"{value!r} is not one of {list(CATEGORICAL_FIELDS[field])}"
    elif field in TEXT_FIELDS:
        if not isinstance(value, str) or not value.strip():
            return f"expected a non-empty string, got {value!r}"
    elif field in NULLABLE_TEXT_FIELDS:
        if value is not None and not isinstance(value, str):
            return f"expected a string or null, got {type(value).__name__}"
    elif field == "interactive_expanded_metaaction":
        if value is None:
            return None
        if not isinstance(value, list):
            return f"expected null or a list of strings, got {type(value).__name__}"
        unknown = [v for v in value if canonical_choice(v, METAACTIONS) is None]
        if unknown:
            return f"unknown categories {unknown}; allowed: {list(METAACTIONS)}"
    elif field == "driving_difficulty":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
            return f"expected an integer 1-4, got {value!r}"
    elif field in BOOLEAN_FIELDS:
        if canonical_boolean(value) is None:
            return f'expected "True" or "False", got {value!r}'
    return None


def canonicalize_label(label: dict[str, Any]) -> dict[str, Any]:
    """The label restricted to the 15 fields, in rubric order, with categorical spellings fixed.

    Assumes `validate_label(label)` is empty.
    """
    out: dict[str, Any] = {}
    for field in FIELDS:
        value = label[field]
        if field in CATEGORICAL_FIELDS:
            value = canonical_choice(value, CATEGORICAL_FIELDS[field])
        elif field in BOOLEAN_FIELDS:
            value = canonical_boolean(value)
        elif field == "interactive_expanded_metaaction" and value is not None:
            value = [canonical_choice(v, METAACTIONS) for v in value]
        out[field] = value
    return out


def format_label_as_answer(label: dict[str, Any]) -> str:
    """The assistant turn the model is trained to produce: pretty JSON in a ```json fence.

    This is how the recipe's SFT dataset formats the human label (Qwen's default JSON style).
    """
    return "```json\n" + json.dumps(label, indent=2) + "\n```"
