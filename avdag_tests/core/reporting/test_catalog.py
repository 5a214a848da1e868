"""Tests for avdag.core.reporting.catalog: the searchable DuckDB clip catalog and its query language."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from avdag.core.captioning.caption_cache import CAPTION_COLUMNS
from avdag.core.common.labels import FIELDS
from avdag.core.ingest.upload_batch import CLIP_COLUMNS
from avdag.core.reporting import catalog as catalog_module
from avdag.core.reporting.catalog import CatalogQueryError, build_catalog, catalog_markdown, parse_query, search
from avdag.demo.sample_data import REAL_LABEL

REAL_LABEL = json.loads(REAL_LABEL.read_text())


def variant(**changes) -> dict:
    return {**REAL_LABEL, **changes}


RAINY_NIGHT = variant(
    weather="Light rain",
    lighting="Night (well-lit by streetlights)",
    road_conditions="Wet asphalt with reflections",
    traffic_light="Red light at the intersection ahead",
    traffic_sign="Stop sign on the right",
    road_type="Urban street",
    interactive_expanded_metaaction=["Yield to VRUs", "Vehicle following"],
    safety_analysis="A pedestrian crosses in the rain; the ego waits at the crosswalk.",
    driving_difficulty=3,
    rule_violation="True",
    interesting_scenario="True",
)
OVERCAST = variant(
    weather="Overcast",
    lighting="Daytime (diffused light)",
    road_type="Rural road",
    traffic_light="N/A",
    interactive_expanded_metaaction=None,
    safety_analysis="A cyclist rides on the shoulder; the ego keeps a wide berth.",
    driving_difficulty=2,
)
BASELINE_ONLY = variant(
    weather="Partly cloudy",
    road_type="Suburban street with parked cars",
    safety_analysis="No pedestrians or cyclists are visible; light traffic.",
    driving_difficulty=1,
)
WRONG_FT = variant(weather="Heavy rain")  # a fine-tuned answer the human label must beat


def clip_row(clip_id: str, batch: str, label: dict | None, **overrides) -> dict:
    row = {
        "clip_id": clip_id,
        "batch": batch,
        "source_url": f"s3://bucket/{batch}/videos/{clip_id}.mp4",
        "local_path": f"/cache/{clip_id}.mp4",
        "label_url": None,
        "duration_s": 10.0,
        "fps": 30.0,
        "width": 1280,
        "height": 720,
        "codec": "h264",
        "num_frames": 300,
        "size_bytes": 1_000_000,
        "sha256": f"sha-{clip_id}",
        "label_json": json.dumps(label) if label else None,
    }
    return {**row, **overrides}


def caption_row(clip_id: str, batch: str, source: str, answer: dict | None, sha: str | None = None) -> dict:
    raw = "```json\n" + json.dumps(answer) + "\n```" if answer else "I cannot tell."
    row = dict.fromkeys(CAPTION_COLUMNS)
    return {
        **row,
        "clip_id": clip_id,
        "batch": batch,
        "clip_sha256": sha or f"sha-{clip_id}",
        "caption_source": source,
        "model_hash": f"{source}-hash-{batch}",
        "raw_text": raw,
        "parsed_json": json.dumps(answer) if answer else None,
    }


def inputs() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    clips = pd.DataFrame(
        [
            clip_row("day", "sample-0001", REAL_LABEL, duration_s=8.5),
            clip_row("rain", "sample-0001", RAINY_NIGHT, duration_s=20.0, width=1920, height=1080),
            clip_row("overcast", "sample-0002", None, duration_s=12.0),
            clip_row("base", "sample-0002", None, duration_s=30.0),
            clip_row("failed", "sample-0002", None, duration_s=5.0),
            clip_row("bare", "sample-0002", None),
            # 'rain' again in a later batch: its row (and duration) win, both batches are listed.
            clip_row("rain", "sample-0003", RAINY_NIGHT, duration_s=21.0, width=1920, height=1080),
        ],
        columns=CLIP_COLUMNS,
    )
    splits = pd.DataFrame(
        [
            {"clip_id": "day", "sha256": "sha-day", "split": "train"},
            {"clip_id": "rain", "sha256": "sha-rain", "split": "eval"},
            {"clip_id": "rain", "sha256": "sha-rain", "split": "unlabelled"},  # disagrees with its label: not picked
            {"clip_id": "day", "sha256": "sha-older-video", "split": "eval"},  # another video: not picked
            {"clip_id": "overcast", "sha256": "sha-overcast", "split": "unlabelled"},
            {"clip_id": "base", "sha256": "sha-base", "split": "unlabelled"},
            {"clip_id": "failed", "sha256": "sha-failed", "split": "unlabelled"},
            {"clip_id": "bare", "sha256": "sha-bare", "split": "unlabelled"},
        ]
    )
    captions = pd.DataFrame(
        [
            caption_row("day", "sample-0001", "baseline", BASELINE_ONLY),
            caption_row("day", "sample-0001", "finetuned", WRONG_FT),
            caption_row("rain", "sample-0001", "finetuned", WRONG_FT),
            caption_row("overcast", "sample-0002", "baseline", BASELINE_ONLY),
            caption_row("overcast", "sample-0002", "finetuned", variant(weather="Clear skies")),
            caption_row("overcast", "sample-0003", "finetuned", OVERCAST),  # latest batch wins
            caption_row("overcast", "sample-0004", "finetuned", WRONG_FT, sha="sha-another-video"),  # stale: ignored
            caption_row("base", "sample-0002", "baseline", BASELINE_ONLY),
            caption_row("failed", "sample-0002", "baseline", BASELINE_ONLY),
            caption_row("failed", "sample-0002", "finetuned", None),  # parse failure: falls back to baseline
        ],
        columns=CAPTION_COLUMNS,
    )
    return clips, splits, captions


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    db = tmp_path_factory.mktemp("catalog") / "clips.parquet"
    return db, build_catalog(db, *inputs())


@pytest.fixture(scope="module")
def db(built) -> Path:
    return built[0]


def table(db: Path) -> pd.DataFrame:
    with duckdb.connect() as conn:
        return conn.read_parquet(str(db)).df().set_index("clip_id")


def ids(db: Path, query: str, **kwargs) -> set[str]:
    return set(search(db, query, limit=None, **kwargs)["clip_id"])


# ----------------------------------------------------------------------------- build


def test_counts(built):
    assert built[1] == {"clips": 6, "labelled": 2, "captioned_baseline": 4, "captioned_finetuned": 4}


def test_best_source_precedence_human_then_finetuned_then_baseline(db):
    rows = table(db)
    assert rows["answer_source"].fillna("<none>").to_dict() == {
        "day": "human",
        "rain": "human",
        "overcast": "finetuned",
        "base": "baseline",
        "failed": "baseline",
        "bare": "<none>",
    }
    assert rows.loc["day", "weather"] == "Clear skies"  # human beats the fine-tuned "Heavy rain"
    assert rows.loc["overcast", "weather"] == "Overcast"  # latest fine-tuned beats baseline and older batch
    assert rows.loc["base", "weather"] == "Partly cloudy"
    assert rows.loc["failed", "weather"] == "Partly cloudy"
    assert pd.isna(rows.loc["bare", "weather"])


def test_row_keeps_latest_batch_and_lists_all_batches(db):
    rows = table(db)
    assert rows.loc["rain", "batch"] == "sample-0003"
    assert list(rows.loc["rain", "batches"]) == ["sample-0001", "sample-0003"]
    assert rows.loc["rain", "duration_s"] == 21.0
    assert rows.loc["rain", "split"] == "eval"
    assert rows.loc["day", "split"] == "train"


def test_captions_raw_and_model_hash_are_kept(db):
    rows = table(db)
    assert json.loads(rows.loc["day", "human_label"]) == REAL_LABEL
    assert json.loads(rows.loc["overcast", "finetuned_caption"])["weather"] == "Overcast"
    assert rows.loc["overcast", "finetuned_model_hash"] == "finetuned-hash-sample-0003"
    assert pd.isna(rows.loc["failed", "finetuned_caption"])
    assert rows.loc["failed", "finetuned_raw"] == "I cannot tell."
    assert pd.isna(rows.loc["base", "finetuned_raw"])


def test_all_answer_fields_are_columns_with_typed_values(db):
    rows = table(db)
    assert set(FIELDS) <= set(rows.columns) | {"clip_id"}
    assert list(rows.loc["rain", "interactive_expanded_metaaction"]) == ["Yield to VRUs", "Vehicle following"]
    assert rows.loc["rain", "driving_difficulty"] == 3
    assert pd.isna(rows.loc["overcast", "interactive_expanded_metaaction"])


def test_derived_flags(db):
    rows = table(db)
    flags = ["has_pedestrians", "has_traffic_light", "is_night", "is_interesting", "rule_violation_flag"]
    assert rows.loc["rain", flags].tolist() == [True, True, True, True, True]
    assert rows.loc["day", flags].tolist() == [False, False, False, False, False]
    assert rows.loc["overcast", "has_pedestrians"]  # "A cyclist rides on the shoulder"
    assert not rows.loc["base", "has_pedestrians"]  # "No pedestrians or cyclists are visible"
    assert rows.loc["bare", flags].isna().all()  # no answer: unknown, not False


def test_empty_inputs_build_an_empty_but_searchable_catalog(tmp_path):
    clips, _, _ = inputs()
    db = tmp_path / "clips.parquet"
    counts = build_catalog(db, clips.head(2), pd.DataFrame(), pd.DataFrame())
    assert counts == {"clips": 2, "labelled": 2, "captioned_baseline": 0, "captioned_finetuned": 0}
    assert ids(db, "labelled -pedestrians") == {"day"}
    assert build_catalog(db, clips.head(0), pd.DataFrame(), pd.DataFrame())["clips"] == 0
    assert search(db, "night").empty and "clips: **0**" in catalog_markdown(db)


# ----------------------------------------------------------------------------- query language


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"day", "rain", "overcast", "base", "failed", "bare"}),
        ('weather="Light rain"', {"rain"}),
        ("weather='light RAIN'", {"rain"}),
        ("split=eval", {"rain"}),
        ("SPLIT=Unlabelled", {"overcast", "base", "failed", "bare"}),
        ("batch=sample-0003", {"rain"}),
        ("batches=sample-0001", {"day", "rain"}),
        ("lighting~night", {"rain"}),
        ("road_type~street", {"rain", "base", "failed"}),
        ('metaaction="yield to vrus"', {"rain"}),
        ("interactive_expanded_metaaction~follow", {"day", "rain", "base", "failed"}),
        ("answer_source=", {"bare"}),
        ("duration_s>10", {"rain", "overcast", "base"}),
        ("duration_s>=10", {"rain", "overcast", "base", "bare"}),
        ("duration_s<10", {"day", "failed"}),
        ("duration_s<=8.5", {"day", "failed"}),
        ("width=1920", {"rain"}),
        ("difficulty>=2", {"rain", "overcast"}),
        ("is_night=true", {"rain"}),
        ("pedestrians", {"rain", "overcast"}),
        ("traffic_light", {"rain"}),
        ("night", {"rain"}),
        ("interesting", {"rain"}),
        ("violation", {"rain"}),
        ("labelled", {"day", "rain"}),
        ("unlabelled", {"overcast", "base", "failed", "bare"}),
        ("-pedestrians", {"day", "base", "failed", "bare"}),
        ("not:labelled", {"overcast", "base", "failed", "bare"}),
        ("-weather=overcast unlabelled", {"base", "failed", "bare"}),
        ("crosswalk", {"rain"}),
        ("CYCLIST", {"overcast", "base", "failed"}),
        ('"wide berth"', {"overcast"}),
        ('"wide night"', set()),
        ("-cyclist", {"day", "rain", "bare"}),
        ("lighting~night pedestrians weather~rain", {"rain"}),
        ("pedestrians duration_s<15", {"overcast"}),
        ("weather=#", set()),
    ],
)
def test_query_forms_return_exactly_the_expected_clips(db, query, expected):
    assert ids(db, query) == expected


def test_query_values_are_parameters_not_sql(db):
    assert ids(db, 'weather="x\' OR 1=1 --"') == set()
    assert ids(db, '"\'; DROP TABLE clips; --"') == set()
    where, params = parse_query('weather="x\' OR 1=1 --"')
    assert "OR 1=1" not in where and params == ["x' OR 1=1 --"]
    assert len(ids(db, "")) == 6  # the table survived


def test_unknown_field_names_the_valid_ones(db):
    with pytest.raises(CatalogQueryError, match=r"unknown field 'wether'.*valid fields:") as caught:
        search(db, "wether=Overcast")
    assert all(name in str(caught.value) for name in ("weather", "duration_s", "split", "pedestrians"))


@pytest.mark.parametrize(
    "query",
    [
        "duration_s>long",
        "width=wide",
        "weather>3",
        "duration_s~10",
        "pedestrians_flag=1",
        'weather="open',
        "is_night=maybe",
    ],
)
def test_bad_queries_raise_catalog_query_error(db, query):
    with pytest.raises(CatalogQueryError):
        search(db, query)


def test_where_sql_is_anded_and_limit_and_order_apply(db):
    assert ids(db, "unlabelled", where_sql="duration_s > 11") == {"overcast", "base"}
    found = search(db, "", limit=3)
    assert list(found["clip_id"]) == ["day", "bare", "base"]  # ordered by batch, then clip_id
    assert list(found.columns) == list(catalog_module.DEFAULT_SEARCH_COLUMNS)


def test_missing_catalog_says_which_asset_to_materialize(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet.*clip_catalog"):
        search(missing, "night")
    with pytest.raises(FileNotFoundError, match="clip_catalog"):
        catalog_markdown(missing)


# ----------------------------------------------------------------------------- atomic build and preview


def test_failed_build_leaves_the_old_catalog_intact_and_no_temp_files(tmp_path):
    db = tmp_path / "clips.parquet"
    clips, splits, captions = inputs()
    build_catalog(db, clips, splits, captions)
    before = db.read_bytes()
    bad = clips.astype({"width": object})
    bad.loc[0, "width"] = "wide"  # fails while the new file is being written
    with pytest.raises(duckdb.Error):
        build_catalog(db, bad, splits, captions)
    assert db.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["clips.parquet"]
    assert len(ids(db, "")) == 6


def test_replace_happens_only_after_the_new_file_is_complete(tmp_path, monkeypatch):
    db = tmp_path / "clips.parquet"
    clips, splits, captions = inputs()
    build_catalog(db, clips, splits, captions)
    real_counts = catalog_module._counts

    def counts_then_check(conn):
        # Mid-build: the new table is written into a temp file, the old catalog is still what readers see.
        assert len(ids(db, "")) == 6
        assert any(name.endswith(".tmp") for name in os.listdir(tmp_path))
        return real_counts(conn)

    monkeypatch.setattr(catalog_module, "_counts", counts_then_check)
    counts = build_catalog(db, clips[clips["clip_id"] != "bare"], splits, captions)
    assert counts["clips"] == 5 and len(ids(db, "")) == 5
    assert sorted(os.listdir(tmp_path)) == ["clips.parquet"]


def test_catalog_markdown_shows_counts_breakdowns_and_rows(db):
    text = catalog_markdown(db, limit=2)
    assert "clips: **6**" in text and "labelled: **2**" in text
    assert "captioned baseline: **4**" in text and "captioned finetuned: **4**" in text
    assert "| unlabelled | 4 |" in text and "| Partly cloudy | 2 |" in text
    assert "| lighting | clips |" in text
    assert "First 2 of 6 clips" in text and "| day | sample-0001 |" in text
