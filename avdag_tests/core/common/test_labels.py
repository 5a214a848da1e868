"""Tests for avdag.core.common.labels: the 15-field schema, validation, canonical spelling, answer format."""

from __future__ import annotations

import copy
import json

import pytest

from avdag.core.common import labels
from avdag.core.common.labels import (
    FIELDS,
    LabelIssue,
    canonicalize_label,
    format_label_as_answer,
    validate_label,
)
from avdag.demo.sample_data import REAL_LABEL

REAL_LABEL_PATH = REAL_LABEL

# Written by hand from the rubric (not derived from the module) so a changed constant is caught.
RUBRIC_FIELDS = [
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
]


@pytest.fixture
def real_label() -> dict:
    return json.loads(REAL_LABEL_PATH.read_text(encoding="utf-8"))


def issue_fields(label) -> list[str]:
    return [issue.field for issue in validate_label(label)]


# --- the schema and the real label ---------------------------------------------------------------


def test_fields_are_the_fifteen_rubric_fields_in_order():
    assert list(FIELDS) == RUBRIC_FIELDS


def test_real_label_validates_clean(real_label):
    assert validate_label(real_label) == []


def test_canonicalize_real_label_keeps_values_and_rubric_order(real_label):
    out = canonicalize_label(real_label)
    assert list(out) == RUBRIC_FIELDS
    assert out == {field: real_label[field] for field in RUBRIC_FIELDS}


# --- spellings that should be accepted and fixed --------------------------------------------------


def test_typographic_hyphen_in_lighting_validates_and_is_canonicalised(real_label):
    real_label["lighting"] = "Daytime (low\u2011contrast daylight)"
    assert validate_label(real_label) == []
    out = canonicalize_label(real_label)
    assert out["lighting"] == "Daytime (low-contrast daylight)"
    assert "\u2011" not in out["lighting"]


@pytest.mark.parametrize(
    "spelling",
    ["  clear   SKIES ", "CLEAR SKIES", "Clear\u00a0skies"],
)
def test_weather_case_and_space_variants_canonicalise(real_label, spelling):
    real_label["weather"] = spelling
    assert validate_label(real_label) == []
    assert canonicalize_label(real_label)["weather"] == "Clear skies"


def test_json_booleans_canonicalise_to_recipe_strings(real_label):
    real_label["rule_violation"] = True
    real_label["interesting_scenario"] = False
    assert validate_label(real_label) == []
    out = canonicalize_label(real_label)
    assert out["rule_violation"] == "True"
    assert out["interesting_scenario"] == "False"
    assert isinstance(out["rule_violation"], str) and isinstance(out["interesting_scenario"], str)


def test_lowercase_boolean_strings_canonicalise(real_label):
    real_label["rule_violation"] = "true"
    real_label["interesting_scenario"] = "FALSE"
    assert validate_label(real_label) == []
    out = canonicalize_label(real_label)
    assert (out["rule_violation"], out["interesting_scenario"]) == ("True", "False")


def test_metaaction_spelling_is_canonicalised(real_label):
    real_label["interactive_expanded_metaaction"] = ["vehicle  following", "Yield to VRUs"]
    assert validate_label(real_label) == []
    assert canonicalize_label(real_label)["interactive_expanded_metaaction"] == ["Vehicle following", "Yield to VRUs"]


@pytest.mark.parametrize("value", [None, []])
def test_metaaction_null_or_empty_list_is_valid(real_label, value):
    real_label["interactive_expanded_metaaction"] = value
    assert validate_label(real_label) == []
    assert canonicalize_label(real_label)["interactive_expanded_metaaction"] == value


def test_nullable_text_fields_accept_null_and_strings(real_label):
    real_label["additional_traffic_rules"] = None
    real_label["additional_map_rules"] = "No parking on the right"
    assert validate_label(real_label) == []


# --- defects, each naming the field ---------------------------------------------------------------


def test_missing_field_is_named(real_label):
    del real_label["road_type"]
    issues = validate_label(real_label)
    assert issues == [LabelIssue("road_type", "missing")]
    assert str(issues[0]).startswith("road_type:")


def test_empty_object_reports_every_field_missing():
    issues = validate_label({})
    assert sorted(issue.field for issue in issues) == sorted(RUBRIC_FIELDS)
    assert all(issue.reason == "missing" for issue in issues)


def test_unknown_weather_is_named_with_the_value(real_label):
    real_label["weather"] = "Sandstorm"
    issues = validate_label(real_label)
    assert [issue.field for issue in issues] == ["weather"]
    assert "Sandstorm" in issues[0].reason
    assert "weather" in str(issues[0])


def test_unknown_lighting_is_named(real_label):
    real_label["lighting"] = "Dusk"
    assert issue_fields(real_label) == ["lighting"]


@pytest.mark.parametrize("value", [0, 5, -1, "3", True, False, 2.0, None])
def test_bad_driving_difficulty_is_named(real_label, value):
    real_label["driving_difficulty"] = value
    issues = validate_label(real_label)
    assert [issue.field for issue in issues] == ["driving_difficulty"]
    assert "1-4" in issues[0].reason


@pytest.mark.parametrize("value", [1, 2, 3, 4])
def test_driving_difficulty_one_to_four_is_valid(real_label, value):
    real_label["driving_difficulty"] = value
    assert validate_label(real_label) == []


@pytest.mark.parametrize("value", ["maybe", "yes", 1, None])
def test_bad_rule_violation_is_named(real_label, value):
    real_label["rule_violation"] = value
    issues = validate_label(real_label)
    assert [issue.field for issue in issues] == ["rule_violation"]
    assert repr(value) in issues[0].reason


def test_metaaction_with_unknown_category_is_named(real_label):
    real_label["interactive_expanded_metaaction"] = ["Vehicle following", "Moonwalk"]
    issues = validate_label(real_label)
    assert [issue.field for issue in issues] == ["interactive_expanded_metaaction"]
    assert "Moonwalk" in issues[0].reason
    assert "Vehicle following" not in issues[0].reason.split("allowed")[0]


def test_metaaction_as_string_is_named(real_label):
    real_label["interactive_expanded_metaaction"] = "Vehicle following"
    issues = validate_label(real_label)
    assert [issue.field for issue in issues] == ["interactive_expanded_metaaction"]
    assert "list" in issues[0].reason


@pytest.mark.parametrize("field", ["road_conditions", "traffic_light", "safety_analysis", "lane_type"])
@pytest.mark.parametrize("value", ["", "   ", 42, None, ["a"]])
def test_text_field_empty_or_not_a_string_is_named(real_label, field, value):
    real_label[field] = value
    issues = validate_label(real_label)
    assert [issue.field for issue in issues] == [field]
    assert "non-empty string" in issues[0].reason


@pytest.mark.parametrize("field", ["additional_traffic_rules", "additional_map_rules"])
def test_nullable_text_field_as_number_is_named(real_label, field):
    real_label[field] = 7
    assert issue_fields(real_label) == [field]


@pytest.mark.parametrize("root", [[], "a label", 3, None, [{"weather": "Clear skies"}]])
def test_non_dict_root_is_one_root_issue(root):
    issues = validate_label(root)
    assert len(issues) == 1
    assert issues[0].field == "<root>"
    assert type(root).__name__ in issues[0].reason


def test_several_defects_each_reported(real_label):
    real_label["weather"] = "Sandstorm"
    real_label["driving_difficulty"] = 9
    del real_label["traffic_sign"]
    assert sorted(issue_fields(real_label)) == ["driving_difficulty", "traffic_sign", "weather"]


# --- unknown keys ---------------------------------------------------------------------------------


def test_extra_keys_are_ignored_and_dropped(real_label):
    real_label["annotator"] = "alice"
    real_label["weather_confidence"] = 0.3
    assert validate_label(real_label) == []
    out = canonicalize_label(real_label)
    assert "annotator" not in out and "weather_confidence" not in out
    assert set(out) == set(RUBRIC_FIELDS)


def test_canonicalize_does_not_mutate_its_input(real_label):
    real_label["lighting"] = "daytime (direct SUNLIGHT)"
    real_label["rule_violation"] = False
    real_label["extra"] = 1
    before = copy.deepcopy(real_label)
    canonicalize_label(real_label)
    assert real_label == before


def test_canonicalize_is_idempotent(real_label):
    real_label["lighting"] = "Daytime (low\u2013contrast daylight)"  # en dash
    real_label["rule_violation"] = True
    once = canonicalize_label(real_label)
    assert validate_label(once) == []
    assert canonicalize_label(once) == once


# --- the assistant-turn format --------------------------------------------------------------------


def test_format_label_as_answer_is_a_json_fence_that_round_trips(real_label):
    label = canonicalize_label(real_label)
    text = format_label_as_answer(label)
    assert text.startswith("```json\n")
    assert text.endswith("\n```")
    body = text[len("```json\n") : -len("\n```")]
    assert json.loads(body) == label
    # pretty JSON with 2-space indent, keys in rubric order
    assert '\n  "weather": "Clear skies",\n' in body
    assert body.index('"weather"') < body.index('"lighting"') < body.index('"interesting_scenario"')
    assert body.count("```") == 0


def test_format_label_as_answer_is_parsed_back_by_parse_answer(real_label):
    from avdag.core.captioning.answers import parse_answer

    label = canonicalize_label(real_label)
    parsed = parse_answer(format_label_as_answer(label))
    assert parsed.data == label
    assert not parsed.repaired
    assert set(parsed.field_status.values()) == {"ok"}


def test_normalize_text_folds_all_typographic_hyphens():
    for dash in "\u2010\u2011\u2012\u2013\u2014\u2212":
        assert labels.normalize_text(f"low{dash}contrast") == "low-contrast"
    assert labels.normalize_text("  a \t b\n") == "a b"
