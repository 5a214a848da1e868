"""The review's rows, filters and exports on a batch built with known differences between the two models."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest

from avdag.core.captioning.caption_cache import CAPTION_COLUMNS
from avdag.core.common.labels import FIELDS
from avdag.core.judging.score_captions import SCORE_COLUMNS
from avdag.core.reporting.catalog import CatalogQueryError
from avdag.core.reporting.review import (
    CSV_COLUMNS,
    export_csv,
    export_json,
    filter_rows,
    frames_json,
    review_rows,
    with_frames,
    worst_first,
    worst_markdown,
)
from avdag.core.reporting.review_page import review_page
from avdag.demo.sample_data import REAL_LABEL

LABEL = json.loads(REAL_LABEL.read_text())
RAINY_NIGHT = {**LABEL, "weather": "Light rain", "lighting": "Night (well-lit by streetlights)"}
BATCH = "b1"


def clip(clip_id: str, label: dict | None) -> dict:
    return {
        "clip_id": clip_id,
        "batch": BATCH,
        "sha256": f"sha-{clip_id}",
        "source_url": f"file:///{clip_id}.mp4",
        "duration_s": 10.0,
        "label_json": json.dumps(label) if label else None,
    }


def caption(clip_id: str, source: str, answer: dict | None, raw: str | None = None) -> dict:
    row = dict.fromkeys(CAPTION_COLUMNS)
    status = {f: ("ok" if answer and f in answer else "missing") for f in FIELDS}
    return {
        **row,
        "clip_id": clip_id,
        "batch": BATCH,
        "clip_sha256": f"sha-{clip_id}",
        "caption_source": source,
        "model_hash": f"{source}-hash",
        "raw_text": raw if raw is not None else json.dumps(answer),
        "parsed_json": json.dumps(answer) if answer else None,
        "parse_error": None if answer else "no JSON object",
        "field_status": json.dumps(status),
        "fields_ok": sum(v == "ok" for v in status.values()),
        "new_tokens": 20,
        "generation": json.dumps({"max_new_tokens": 512}),
    }


def score(clip_id: str, source: str, field: str, value: int | None, model_hash: str | None = None) -> dict:
    row = dict.fromkeys(SCORE_COLUMNS)
    return {
        **row,
        "clip_id": clip_id,
        "batch": BATCH,
        "caption_source": source,
        "model_hash": model_hash or f"{source}-hash",
        "field": field,
        "score": value,
        "model_answer": None if value is None else '"an answer"',
        "human_answer": '"a label"',
        "judge_reply": f"{source} {field} reply <answer>{value}</answer>" if value else "no model answer",
    }


@pytest.fixture(scope="module")
def tables():
    # worse: fine-tuned got weather wrong on a clip the baseline had right.
    # better: the baseline got lighting wrong, fine-tuned right.
    # rainy: unlabelled, rainy night, fine-tuned failed to parse.
    clips = pd.DataFrame([clip("worse", LABEL), clip("better", LABEL), clip("rainy", None)])
    splits = pd.DataFrame(
        [
            {"clip_id": "worse", "sha256": "sha-worse", "split": "eval"},
            {"clip_id": "better", "sha256": "sha-better", "split": "eval"},
            {"clip_id": "rainy", "sha256": "sha-rainy", "split": "unlabelled"},
        ]
    )
    captions = pd.DataFrame(
        [
            caption("worse", "baseline", LABEL),
            caption("worse", "finetuned", {**LABEL, "weather": "Heavy rain"}),
            caption("better", "baseline", {**LABEL, "lighting": "Night (poorly lit; few/no streetlights)"}),
            caption("better", "finetuned", LABEL),
            caption("rainy", "baseline", RAINY_NIGHT),
            caption("rainy", "finetuned", None, raw="I see rain " * 40),
        ],
        columns=CAPTION_COLUMNS,
    )
    scores = []
    for field in FIELDS:
        scores.append(score("worse", "baseline", field, 5))
        scores.append(score("worse", "finetuned", field, 1 if field == "weather" else 5))
        scores.append(score("better", "baseline", field, 1 if field == "lighting" else 5))
        scores.append(score("better", "finetuned", field, 5))
        scores.append(score("better", "finetuned", field, 2, model_hash="an-older-checkpoint"))  # not joined
    scores.append(score("rainy", "baseline", "weather", None))  # no answer: counts 1, as in the comparison
    return clips, splits, captions, pd.DataFrame(scores, columns=SCORE_COLUMNS)


@pytest.fixture(scope="module")
def rows(tables):
    frames = {(BATCH, "worse"): ["data:image/png;base64,AAAA"]}
    return review_rows(*tables, questions={"weather": "What is the weather?"}, frames=frames)


def by_id(rows) -> dict:
    return {row["clip_id"]: row for row in rows}


def test_rows_put_label_answers_scores_and_replies_side_by_side(rows):
    worse = by_id(rows)["worse"]
    weather = next(f for f in worse["fields"] if f["field"] == "weather")
    assert weather["human"] == "Clear skies" and weather["baseline"] == "Clear skies"
    assert weather["finetuned"] == "Heavy rain" and weather["question"] == "What is the weather?"
    assert (weather["baseline_score"], weather["finetuned_score"]) == (5, 1)
    assert weather["finetuned_reply"] == "finetuned weather reply <answer>1</answer>"
    assert weather["worse"] and weather["disagree"]
    assert worse["fields_worse"] == 1 and worse["fields_disagree"] == 1 and worse["min_score"] == 1
    assert worse["frames"] == ["data:image/png;base64,AAAA"] and worse["split"] == "eval"


def test_scores_of_another_checkpoint_are_not_joined(rows):
    better = by_id(rows)["better"]
    assert {f["finetuned_score"] for f in better["fields"]} == {5}
    assert better["fields_worse"] == 0 and better["min_score"] == 5 and better["fields_disagree"] == 1


def test_parse_failures_and_quality_flags(rows):
    rainy = by_id(rows)["rainy"]
    assert rainy["parse_failed"] and rainy["sources"]["finetuned"]["parse_failed"]
    assert not rainy["sources"]["baseline"]["parse_failed"]
    assert "repetitive" in rainy["sources"]["finetuned"]["quality"]
    assert {f["finetuned_status"] for f in rainy["fields"]} == {"not parsed"}
    assert not rainy["labelled"] and rainy["fields_disagree"] == 0
    weather = next(f for f in rainy["fields"] if f["field"] == "weather")
    assert weather["baseline_score"] is None and weather["baseline_strict_score"] == 1 and rainy["min_score"] == 1
    # unlabelled: the catalog columns come from the best model answer (the baseline's here)
    assert rainy["catalog"]["weather"] == "Light rain" and rainy["catalog"]["is_night"] is True


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"worse", "better", "rainy"}),
        ('weather="Light rain" night', {"rainy"}),
        (["weather=Light rain", "night"], {"rainy"}),
        ("worse", {"worse"}),
        ("disagree", {"worse", "better"}),
        ("parse_failed", {"rainy"}),
        ("-parse_failed", {"worse", "better"}),
        ("min_score<=1", {"worse", "rainy"}),
        ("split=eval -worse", {"better"}),
        ("unlabelled", {"rainy"}),
        ("scored", {"worse", "better", "rainy"}),
        ("scored -unlabelled", {"worse", "better"}),
    ],
)
def test_filters(rows, query, expected):
    assert {row["clip_id"] for row in filter_rows(rows, query)} == expected


def test_a_bad_filter_says_why(rows):
    with pytest.raises(CatalogQueryError, match="unknown field 'colour'"):
        filter_rows(rows, "colour=blue")


def test_worst_first_orders_by_lowest_score_then_unscored(rows):
    assert [row["clip_id"] for row in worst_first(rows)] == ["worse", "rainy", "better"]
    preview = worst_markdown(rows)
    assert preview.index("| worse |") < preview.index("| better |") and "| weather |" in preview


def test_csv_has_one_line_per_clip_and_field_with_the_stored_scores(rows, tables):
    records = list(csv.DictReader(io.StringIO(export_csv(rows).decode())))
    assert list(records[0]) == list(CSV_COLUMNS) and len(records) == 3 * len(FIELDS)
    rainy = next(r for r in records if r["clip_id"] == "rainy" and r["field"] == "weather")
    assert (rainy["baseline_score"], rainy["baseline_strict_score"]) == ("", "1")
    weather = next(r for r in records if r["clip_id"] == "worse" and r["field"] == "weather")
    assert (weather["baseline_score"], weather["finetuned_score"], weather["worse"]) == ("5", "1", "true")
    assert json.loads(weather["finetuned_answer"]) == "Heavy rain"
    scores = tables[3]
    stored = scores[(scores["model_hash"] != "an-older-checkpoint")]
    for row in stored.itertuples():
        line = next(r for r in records if r["clip_id"] == row.clip_id and r["field"] == row.field)
        assert line[f"{row.caption_source}_score"] == ("" if pd.isna(row.score) else str(int(row.score)))


def test_json_export_round_trips_without_frames_and_frames_travel_apart(rows):
    exported = json.loads(export_json(rows, "t"))
    assert exported["clips"] == 3 and all("frames" not in row for row in exported["rows"])
    again = with_frames(exported["rows"], json.loads(frames_json(rows)))
    assert by_id(again)["worse"]["frames"] == by_id(rows)["worse"]["frames"]
    assert filter_rows(again, "worse")[0]["clip_id"] == "worse"


def test_page_is_self_contained_and_escapes_markup(rows):
    hostile = [{**rows[0], "clip_id": "</script><script>alert(1)</script>"}] + rows[1:]
    page = review_page(hostile, "t <b>", query='weather="Light rain"')
    assert "</script><script>alert(1)" not in page and "t &lt;b&gt;" in page
    assert "http://" not in page and "https://" not in page  # no CDN: it opens offline
    assert 'value="weather=&quot;Light rain&quot;"' in page
