"""labeling_queue through Dagster on stored upstream values: a batch where some clips have no label,
and captions built with known differences, so the ranking is checked against what it should see."""

from __future__ import annotations

import csv
import io
import json

import dagster as dg
import pandas as pd
import pytest

from avdag.core.captioning.caption_cache import CAPTION_COLUMNS
from avdag.core.common.labels import FIELDS
from avdag.core.common.state_store import StateStore
from avdag.definitions import build_resources, defs
from avdag.defs.pipeline.partitions import clip_batches
from avdag.defs.reporting.labeling_queue import QUEUE_CSV
from avdag.demo.sample_data import REAL_LABEL
from avdag.resources.io_managers import JsonIOManager, ParquetIOManager
from avdag.resources.storage import StateStoreResource

BATCH = "b1"
DAY = json.loads(REAL_LABEL.read_text())  # clear, sunny, freeway, nobody on foot
DAY_2 = {**DAY, "driving_difficulty": 2}
RAINY_NIGHT = {
    **DAY,
    "weather": "Heavy rain",
    "lighting": "Night (poorly lit; few/no streetlights)",
    "road_conditions": "Wet asphalt with standing water",
    "safety_analysis": "At night in heavy rain a pedestrian crosses in front of the ego, which stops.",
    "interactive_expanded_metaaction": ["Yield to VRUs"],
    "interesting_scenario": "True",
}
# clip -> (label, baseline answer, fine-tuned answer); None = no label / did not parse
CLIPS = {
    "labelled-1": (DAY, DAY, DAY),
    "labelled-2": (DAY_2, DAY, DAY_2),
    "agrees": (None, DAY, DAY),  # both models give a labelled clip's answer: least to learn
    "parse-fails": (None, DAY, None),  # the fine-tuned model's answer did not parse
    "disagrees": (None, {**DAY, "weather": "Light snow", "lighting": "Daytime (diffused light)"}, DAY),
    "rare": (None, RAINY_NIGHT, RAINY_NIGHT),  # agreed, but night, rain and a pedestrian: none labelled
}


def _caption(clip_id: str, source: str, answer: dict | None) -> dict:
    status = {f: "ok" for f in FIELDS} if answer else {f: "missing" for f in FIELDS}
    return {
        **dict.fromkeys(CAPTION_COLUMNS),
        "clip_id": clip_id,
        "batch": BATCH,
        "clip_sha256": f"sha-{clip_id}",
        "caption_source": source,
        "model_hash": f"{source}-hash",
        "raw_text": json.dumps(answer) if answer else "garbled",
        "parsed_json": json.dumps(answer) if answer else None,
        "field_status": json.dumps(status),
        "fields_ok": 15 if answer else 0,
    }


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    root = tmp_path_factory.mktemp("queue")
    raw = pd.DataFrame(
        [
            {
                "clip_id": clip_id,
                "batch": BATCH,
                "sha256": f"sha-{clip_id}",
                "source_url": f"file:///{clip_id}.mp4",
                "label_json": json.dumps(label) if label else None,
            }
            for clip_id, (label, _, _) in CLIPS.items()
        ]
    )
    values = {
        "raw_clips": raw,
        "baseline_captions": pd.DataFrame([_caption(c, "baseline", b) for c, (_, b, _) in CLIPS.items()]),
        "finetuned_captions": pd.DataFrame([_caption(c, "finetuned", f) for c, (_, _, f) in CLIPS.items()]),
    }
    for asset, frame in values.items():
        (root / "assets" / asset).mkdir(parents=True)
        frame.to_parquet(root / "assets" / asset / f"{BATCH}.parquet", index=False)
    resources = build_resources()
    resources.update(
        parquet_io=ParquetIOManager(base_dir=str(root / "assets")),
        json_io=JsonIOManager(base_dir=str(root / "assets")),
        state=StateStoreResource(url=str(root / "state")),
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        result = dg.materialize(list(defs.assets), selection=["labeling_queue"], resources=resources, instance=instance)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    store = StateStore(str(root / "state"))
    queue = list(csv.DictReader(io.StringIO(store.read_bytes(QUEUE_CSV).decode())))
    return queue, metadata


def test_only_unlabelled_clips_are_queued(queued):
    queue, metadata = queued
    assert {row["clip_id"] for row in queue} == {"agrees", "parse-fails", "disagrees", "rare"}
    assert metadata["unlabelled_clips"].value == 4
    assert [int(row["rank"]) for row in queue] == [1, 2, 3, 4]


def test_uncertain_and_rare_clips_rank_above_one_both_models_agree_on(queued):
    queue, _ = queued
    order = [row["clip_id"] for row in queue]
    assert order[-1] == "agrees", order
    scores = {row["clip_id"]: float(row["score"]) for row in queue}
    assert scores["parse-fails"] > scores["agrees"] and scores["disagrees"] > scores["agrees"]
    assert scores["rare"] > scores["agrees"]
    assert float(next(r for r in queue if r["clip_id"] == "agrees")["uncertainty"]) == 0


def test_every_rank_says_why(queued):
    queue, metadata = queued
    by_id = {row["clip_id"]: row for row in queue}
    assert "fields failed to parse" in by_id["parse-fails"]["reason"]
    assert by_id["disagrees"]["disagreeing_fields"] == "weather, lighting"
    assert "disagree on weather, lighting" in by_id["disagrees"]["reason"]
    assert "rare: " in by_id["rare"]["reason"] and "night (0% of labelled)" in by_id["rare"]["rare"]
    assert "pedestrians" in by_id["rare"]["rare"] and by_id["rare"]["predicted_weather"] == "Heavy rain"
    top = metadata["top"].value
    assert "4 unlabelled clips" in top and all(clip in top for clip in by_id)
    assert top.index(queue[0]["clip_id"]) < top.index("agrees")
    assert metadata["csv"].value.endswith(QUEUE_CSV)
