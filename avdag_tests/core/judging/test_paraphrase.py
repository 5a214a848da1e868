"""The calibration's paraphraser: same meaning, other words, never the same string."""

import json

import pytest

from avdag.core.common.labels import FIELDS, MULTIPLE_CHOICE_FIELDS, normalize_text
from avdag.core.judging.calibration import answer_key
from avdag.core.judging.offline_judge import canonical_multiple_choice, free_text_key
from avdag.core.judging.paraphrase import paraphrase_answer, paraphrase_text
from avdag.demo.sample_data import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import plan_clip

LABELS = [plan_clip(0, i)[2] for i in range(40)] + [
    json.loads((REAL_CLIP_DIR / f"{REAL_CLIP_ID}.label.json").read_text())
]


@pytest.mark.parametrize("field", FIELDS)
def test_every_answer_is_rewritten_to_the_same_value_in_another_form(field):
    for label in LABELS:
        human = label[field]
        paraphrase = paraphrase_answer(field, human)
        assert paraphrase == paraphrase_answer(field, human)  # deterministic
        assert json.dumps(paraphrase) != json.dumps(human)
        if field in MULTIPLE_CHOICE_FIELDS:
            assert canonical_multiple_choice(field, paraphrase) == canonical_multiple_choice(field, human)
        elif field == "interactive_expanded_metaaction":
            assert answer_key(field, [v.casefold() for v in paraphrase or []]) == answer_key(
                field, [v.casefold() for v in human or []]
            )
        elif human is None:
            assert paraphrase == "N/A"
        else:
            assert free_text_key(paraphrase) != free_text_key(human)  # the judge cannot short-circuit it


def test_free_text_gets_synonyms_number_words_and_reordered_clauses():
    assert paraphrase_text("Two lanes in each direction, no turn lanes") == (
        "No turning lanes, 2 lanes in both directions"
    )
    assert paraphrase_text("The ego vehicle stops at the traffic light. A pedestrian crosses.") == (
        "A person on foot crosses. The ego car stops at the traffic signal."
    )
    assert paraphrase_text("Four-way intersection controlled by traffic lights") == (
        "4-way junction controlled by traffic signals"
    )
    # a clause leaning on the one before it ("so ...") keeps its place; hyphenated words are left whole
    assert paraphrase_text("The light is red, so the ego vehicle brakes to a stop.") == (
        "The light is red, so the ego car applies the brakes to a stop."
    )
    assert paraphrase_text("A pedestrian-crossing sign.") == "As seen: a pedestrian-crossing sign."  # nothing to swap
    assert normalize_text(paraphrase_text("A no stopping sign.\nA keep right sign.\n")) == (
        "A keep right sign. A no stopping sign."
    )
