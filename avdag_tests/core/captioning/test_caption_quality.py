"""Caption quality per source: a rambling, looping or truncated model shows before any judging."""

import json
import math

import pandas as pd
import pytest

from avdag.core.captioning.caption_cache import CAPTION_COLUMNS
from avdag.core.captioning.caption_quality import (
    caption_flags,
    caption_quality,
    caption_quality_markdown,
    repeated_ngram_ratio,
)
from avdag.core.captioning.model import GenerationSettings

LABEL = {"weather": "Light rain", "lighting": "Daytime (diffused light)", "safety_analysis": "The car slows for a bus."}
GOOD = json.dumps({**LABEL, "safety_analysis": "The ego car slows behind a bus."})
LOOP = "The car is driving. " * 40
RAMBLE = GOOD + " " + " ".join(f"word{i}" for i in range(120))


def captions(source: str, texts: list[str | None], new_tokens: list[int], *, max_new_tokens: int = 64) -> pd.DataFrame:
    """Caption rows as caption_clips writes them; a None text is a caption that failed."""
    n = len(texts)
    frame = pd.DataFrame({column: [None] * n for column in CAPTION_COLUMNS})
    frame["clip_id"] = [f"c{i}" for i in range(n)]
    frame["batch"] = "b1"
    frame["caption_source"] = source
    frame["generation"] = GenerationSettings(max_new_tokens=max_new_tokens).fingerprint()
    frame["raw_text"] = ["" if t is None else t for t in texts]
    frame["caption_error"] = ["CUDA out of memory" if t is None else None for t in texts]
    frame["new_tokens"] = new_tokens
    return frame


def labels(n: int) -> pd.DataFrame:
    return pd.DataFrame({"batch": "b1", "clip_id": [f"c{i}" for i in range(n)], "label_json": json.dumps(LABEL)})


def test_repeated_ngram_ratio_tells_a_loop_from_an_answer():
    assert repeated_ngram_ratio(GOOD) == 0.0
    assert repeated_ngram_ratio(LOOP) > 0.9
    assert repeated_ngram_ratio("too short") == 0.0


def test_each_flag_is_raised_by_its_own_failure_only():
    frame = captions("baseline", [GOOD, "  \n", LOOP, RAMBLE, GOOD, None], [30, 1, 64, 60, 64, 0])
    flags = caption_flags(frame, labels(6)).set_index("clip_id")
    expected = {
        "c0": set(),
        "c1": {"empty"},
        "c2": {"hit_token_cap", "repetitive", "longer_than_label"},
        "c3": {"longer_than_label"},
        "c4": {"hit_token_cap"},
        "c5": set(),  # not captioned: counted apart, never as empty
    }
    for clip, raised in expected.items():
        assert {
            f for f in ("hit_token_cap", "empty", "repetitive", "longer_than_label") if flags.loc[clip, f]
        } == raised


def test_a_rambling_fine_tuned_model_shows_against_a_clean_baseline():
    frame = pd.concat(
        [
            captions("baseline", [GOOD] * 4, [30] * 4),
            captions("finetuned", [LOOP, LOOP, RAMBLE, GOOD], [64, 64, 60, 30]),
        ]
    )
    table = caption_quality(frame, labels(4), sources=["baseline", "finetuned"]).set_index("source")
    assert table.loc["baseline", ["hit_token_cap", "empty", "repetitive", "longer_than_label"]].tolist() == [0] * 4
    assert table.loc["finetuned", "hit_token_cap_rate"] == 0.5
    assert table.loc["finetuned", "repetitive_rate"] == 0.5
    assert table.loc["finetuned", "longer_than_label_rate"] == 0.75
    assert table.loc["finetuned", "median_length_ratio"] > 3 > table.loc["baseline", "median_length_ratio"]
    markdown = caption_quality_markdown(table.reset_index())
    assert "2 (50%)" in markdown and "finetuned" in markdown


def test_rates_are_over_captioned_clips_and_length_needs_a_label():
    frame = captions("baseline", [RAMBLE, None, GOOD], [10, 0, 10])
    row = caption_quality(frame, labels(1)).iloc[0]  # only c0 has a label
    assert (row["clips"], row["not_captioned"]) == (3, 1)
    assert row["longer_than_label"] == 1 and row["longer_than_label_rate"] == 1.0
    assert row["empty_rate"] == 0.0
    no_labels = caption_quality(frame).iloc[0]
    assert no_labels["longer_than_label"] == 0 and math.isnan(no_labels["longer_than_label_rate"])


def test_a_source_without_captions_gets_an_empty_row():
    table = caption_quality(captions("baseline", [GOOD], [5]), sources=["baseline", "finetuned"])
    assert table["source"].tolist() == ["baseline", "finetuned"]
    assert table.iloc[1]["clips"] == 0 and math.isnan(table.iloc[1]["hit_token_cap_rate"])
    assert caption_quality(captions("baseline", [], [])).empty


@pytest.mark.parametrize("generation", [None, "{}", "not json"])
def test_an_unknown_token_cap_never_flags(generation):
    frame = captions("baseline", [GOOD], [10_000])
    frame["generation"] = generation
    assert not caption_flags(frame)["hit_token_cap"].any()
