"""Tests for avdag.core.captioning.answers: recovering the 15-field object from a model's raw reply."""

from __future__ import annotations

import json

import pytest

from avdag.core.captioning.answers import answer_is_complete, parse_answer
from avdag.demo.sample_data import REAL_LABEL

REAL_LABEL_PATH = REAL_LABEL
ALL_FIELDS = {
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
}


@pytest.fixture
def label() -> dict:
    return json.loads(REAL_LABEL_PATH.read_text(encoding="utf-8"))


def fenced(obj: dict) -> str:
    return "```json\n" + json.dumps(obj, indent=2) + "\n```"


# --- well-formed replies --------------------------------------------------------------------------


def test_clean_fenced_reply(label):
    parsed = parse_answer(fenced(label))
    assert parsed.ok
    assert parsed.data == label
    assert parsed.error is None
    assert parsed.repaired is False
    assert parsed.field_status == dict.fromkeys(ALL_FIELDS, "ok")


def test_bare_json_with_prose_around(label):
    raw = "Here is the analysis:\n" + json.dumps(label) + "\nLet me know if you need more."
    parsed = parse_answer(raw)
    assert parsed.data == label
    assert not parsed.repaired


def test_think_section_before_json(label):
    raw = '<think>The sky is {clear}, the road is dry. Maybe {"weather": "Overcast"}? No.</think>\n' + fenced(label)
    parsed = parse_answer(raw)
    assert parsed.data == label
    assert parsed.data["weather"] == "Clear skies"


def test_answer_tag_wrapped_reply(label):
    raw = "<think>reasoning {not json}</think>\n<answer>\n" + json.dumps(label, indent=2) + "\n</answer>"
    parsed = parse_answer(raw)
    assert parsed.data == label
    assert not parsed.repaired


def test_answer_tag_with_fence_inside(label):
    raw = "<answer>" + fenced(label) + "</answer>"
    assert parse_answer(raw).data == label


def test_braces_and_quotes_inside_strings_do_not_confuse_extractor(label):
    label["traffic_sign"] = 'A sign reading "}{ ]] {[" and a brace } then {'
    label["safety_analysis"] = "Escaped backslash at the end \\"
    raw = "prefix " + json.dumps(label) + " trailing {garbage"
    parsed = parse_answer(raw)
    assert parsed.data == label
    assert not parsed.repaired


# --- repairs --------------------------------------------------------------------------------------


def test_python_literals_repaired():
    raw = '{"additional_traffic_rules": None, "rule_violation": True, "interesting_scenario": False}'
    parsed = parse_answer(raw)
    assert parsed.data == {"additional_traffic_rules": None, "rule_violation": True, "interesting_scenario": False}
    assert parsed.repaired is True
    assert parsed.field_status["rule_violation"] == "ok"
    assert parsed.field_status["additional_traffic_rules"] == "ok"


def test_python_literals_inside_strings_survive():
    raw = (
        '{"safety_analysis": "None of the above; True story, False alarm", '
        '"traffic_light": "NoneTrue", "additional_map_rules": None}'
    )
    parsed = parse_answer(raw)
    assert parsed.repaired is True
    assert parsed.data["safety_analysis"] == "None of the above; True story, False alarm"
    assert parsed.data["traffic_light"] == "NoneTrue"
    assert parsed.data["additional_map_rules"] is None


def test_python_literal_repair_respects_escaped_quotes():
    raw = '{"traffic_sign": "A sign saying \\"True North\\" ahead", "rule_violation": True}'
    parsed = parse_answer(raw)
    assert parsed.data == {"traffic_sign": 'A sign saying "True North" ahead', "rule_violation": True}


def test_trailing_commas_repaired(label):
    body = json.dumps(label, indent=2)
    body = body.replace('"Vehicle following"', '"Vehicle following",')  # trailing comma in the list
    body = body[: body.rindex("}")].rstrip() + ",\n}"  # trailing comma in the object
    parsed = parse_answer("```json\n" + body + "\n```")
    assert parsed.repaired is True
    assert parsed.data == label


def test_trailing_comma_repair_leaves_strings_alone():
    raw = '{"lane_type": "Lanes [left, ] and {a, }", "driving_difficulty": 2,}'
    parsed = parse_answer(raw)
    assert parsed.data == {"lane_type": "Lanes [left, ] and {a, }", "driving_difficulty": 2}


def test_truncated_mid_string_keeps_complete_fields(label):
    text = json.dumps(label, indent=2)
    cut = text.index("Gently curving") + len("Gently cur")  # inside junction_type's value
    parsed = parse_answer("```json\n" + text[:cut])
    assert parsed.ok
    assert parsed.repaired is True
    for name in ("weather", "lighting", "road_conditions", "traffic_light", "traffic_sign", "road_type"):
        assert parsed.data[name] == label[name]
        assert parsed.field_status[name] == "ok"
    assert parsed.data["junction_type"] == "Gently cur"
    for name in ("lane_type", "safety_analysis", "driving_difficulty", "interesting_scenario"):
        assert parsed.field_status[name] == "missing"


def test_truncated_mid_list_keeps_complete_items(label):
    label["interactive_expanded_metaaction"] = ["Vehicle following", "Yield to VRUs"]
    text = json.dumps(label)
    cut = text.index("Yield to VRUs") + len("Yie")
    parsed = parse_answer(text[:cut])
    assert parsed.repaired is True
    assert parsed.data["weather"] == "Clear skies"
    assert parsed.data["interactive_expanded_metaaction"] == ["Vehicle following", "Yie"]
    assert parsed.field_status["interactive_expanded_metaaction"].startswith("invalid:")
    assert parsed.field_status["safety_analysis"] == "missing"


def test_truncated_after_list_comma(label):
    text = json.dumps(label)
    cut = text.index('"Vehicle following"') + len('"Vehicle following", ')
    parsed = parse_answer(text[:cut])
    assert parsed.data["interactive_expanded_metaaction"] == ["Vehicle following"]
    assert parsed.field_status["interactive_expanded_metaaction"] == "ok"


def test_truncated_after_key_colon_drops_the_key(label):
    text = json.dumps(label)
    cut = text.index('"road_type":') + len('"road_type":')
    parsed = parse_answer(text[:cut])
    assert parsed.ok
    assert "road_type" not in parsed.data
    assert parsed.data["traffic_sign"] == label["traffic_sign"]
    assert parsed.field_status["road_type"] == "missing"


def test_truncated_mid_key_keeps_complete_fields():
    parsed = parse_answer('{"weather": "Clear skies", "ligh')
    assert parsed.data == {"weather": "Clear skies"}


# --- nothing usable -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "I cannot help with that.", "```json\n```", '<think>{"weather": 1}</think>'])
def test_no_object_gives_none_and_all_missing(raw):
    parsed = parse_answer(raw)
    assert parsed.data is None
    assert not parsed.ok
    assert parsed.error
    assert parsed.field_status == dict.fromkeys(ALL_FIELDS, "missing")


def test_unrepairable_garbage_object():
    parsed = parse_answer("{weather: sunny; lighting = ??? }")
    assert parsed.data is None
    assert parsed.error and "invalid JSON" in parsed.error
    assert parsed.field_status == dict.fromkeys(ALL_FIELDS, "missing")


def test_json_array_is_not_an_answer():
    parsed = parse_answer('```json\n["Clear skies", "Daytime (direct sunlight)", 2]\n```')
    assert parsed.data is None
    assert parsed.error
    assert set(parsed.field_status.values()) == {"missing"}


# --- per-field status -----------------------------------------------------------------------------


def test_field_status_ok_missing_invalid(label):
    label["weather"] = "Sandstorm"
    label["driving_difficulty"] = 7
    del label["lane_type"]
    parsed = parse_answer(fenced(label))
    status = parsed.field_status
    assert set(status) == ALL_FIELDS
    assert status["lane_type"] == "missing"
    assert status["weather"].startswith("invalid: ") and "Sandstorm" in status["weather"]
    assert status["driving_difficulty"].startswith("invalid: ") and "7" in status["driving_difficulty"]
    ok = {name for name, value in status.items() if value == "ok"}
    assert ok == ALL_FIELDS - {"lane_type", "weather", "driving_difficulty"}


def test_field_status_accepts_typographic_hyphen_and_json_booleans(label):
    label["lighting"] = "Daytime (low\u2011contrast daylight)"
    label["rule_violation"] = False
    parsed = parse_answer(fenced(label))
    assert parsed.field_status["lighting"] == "ok"
    assert parsed.field_status["rule_violation"] == "ok"


def test_extra_keys_are_kept_in_data_but_not_in_status(label):
    label["confidence"] = 0.9
    parsed = parse_answer(json.dumps(label))
    assert parsed.data["confidence"] == 0.9
    assert "confidence" not in parsed.field_status


# --- answer_is_complete ---------------------------------------------------------------------------


def test_answer_is_complete_false_for_half_object(label):
    text = "```json\n" + json.dumps(label, indent=2)
    assert answer_is_complete(text) is True
    assert answer_is_complete(text[: len(text) // 2]) is False
    assert answer_is_complete(text[:-1]) is False  # everything but the final brace


def test_answer_is_complete_true_before_closing_fence(label):
    assert answer_is_complete("```json\n" + json.dumps(label, indent=2) + "\n") is True
    assert answer_is_complete(fenced(label)) is True


def test_answer_is_complete_ignores_braces_in_strings_and_think():
    assert answer_is_complete('```json\n{"traffic_sign": "a } sign"') is False
    assert answer_is_complete('<think>{"a": 1}</think>\n```json\n{"weather": "Clear') is False
    assert answer_is_complete('<think>{"a": 1}</think>\n```json\n{"weather": "}"}') is True


@pytest.mark.parametrize("text", ["", "```json\n", '<think>still thinking {"a": 1}', "no json here"])
def test_answer_is_complete_false_without_object(text):
    assert answer_is_complete(text) is False


def test_answer_is_complete_agrees_with_parse_on_every_prefix(label):
    """Once complete, the prefix parses to the full label without repair."""
    text = fenced(label)
    complete_at = next(i for i in range(len(text) + 1) if answer_is_complete(text[:i]))
    assert text[complete_at - 1] == "}"
    prefix = text[:complete_at]
    assert all(answer_is_complete(text[:i]) for i in range(complete_at, len(text) + 1))
    parsed = parse_answer(prefix)
    assert parsed.data == label and not parsed.repaired


def test_salvage_keeps_fields_that_decode_when_the_object_is_broken():
    raw = (
        '```json\n{\n  "weather": "Light snow",\n  "traffic_sign": "A speed limit  "road_type": "Highway/freeway",\n'
        '  "rule_violation": False,\n  "lane_type": "Two lanes'
    )
    parsed = parse_answer(raw)
    assert parsed.ok and parsed.repaired
    # traffic_sign is garbled and lane_type is cut mid-string: both dropped, the rest kept.
    assert parsed.data == {"weather": "Light snow", "road_type": "Highway/freeway", "rule_violation": False}
    assert parsed.field_status["traffic_sign"] == "missing"
    assert parsed.field_status["weather"] == "ok"


def test_salvage_finds_nothing_in_text_without_rubric_fields():
    parsed = parse_answer('{"colour": "blue", "size": oops}')
    assert not parsed.ok and parsed.error
