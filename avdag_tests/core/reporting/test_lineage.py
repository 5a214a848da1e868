"""`avdag lineage` follows what the score row recorded, never the latest files.

The home is built the way the assets build it: caption tables and the caption cache by the real
`caption_clips`, score tables by the real `score_captions`, checkpoint folders laid out as the
trainers install them (weights + avdag_training.json), the latest/in-service records as the JSON
IO manager writes them. The scenario is the demo's 800-step checkpoint, scored, then a 60-step
retrain promoted and the batch re-captioned with it, the score table left as it was.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from avdag.cli import main
from avdag.core.captioning.caption_cache import caption_clips
from avdag.core.captioning.model import CaptionOutput, GenerationSettings
from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.common.labels import WEATHER, format_label_as_answer
from avdag.core.common.model_identity import model_fingerprint
from avdag.core.common.state_store import StateStore, storage_options
from avdag.core.ingest.splits import assign_splits
from avdag.core.ingest.upload_batch import CLIP_COLUMNS
from avdag.core.judging.judges import JudgeVerdict
from avdag.core.judging.score_captions import score_captions
from avdag.core.reporting.lineage import MATCHES, LineageError, format_lineage, score_lineage
from avdag.demo.synthetic_clips import label_for_scene, random_scene

PROMPTS = load_prompt_set()
CLIPS = ["clip-1", "clip-2"]


def _quiet(_: str) -> None:
    pass


def _write_table(home: Path, asset: str, batch: str, frame: pd.DataFrame) -> None:
    """As parquet_io stores a partition: assets/<asset>/<batch>.parquet."""
    path = home / "assets" / asset / f"{batch}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def _write_record(home: Path, asset: str, record: dict) -> None:
    """As json_io stores an unpartitioned asset: assets/<asset>.json."""
    (home / "assets").mkdir(parents=True, exist_ok=True)
    (home / "assets" / f"{asset}.json").write_text(json.dumps(record, indent=2) + "\n")


def _ingest(home: Path, batch: str, *, content: str = "") -> pd.DataFrame:
    """raw_clips and clip_splits of a batch; every labelled clip on the eval side."""
    rng = random.Random(0)
    rows = [
        {
            "clip_id": clip_id,
            "batch": batch,
            "source_url": f"s3://landing/{batch}/videos/{clip_id}.camera_front_wide_120fov.mp4",
            "label_url": f"s3://landing/{batch}/metas/{clip_id}.label.json",
            "duration_s": 8.0,
            "fps": 30.0,
            "width": 960,
            "height": 540,
            "codec": "h264",
            "num_frames": 240,
            "size_bytes": 1000,
            "sha256": hashlib.sha256(f"{batch}/{clip_id}/{content}".encode()).hexdigest(),
            "label_json": json.dumps(label_for_scene(random_scene(rng), rng)),
        }
        for clip_id in CLIPS
    ]
    clips = pd.DataFrame(rows, columns=list(CLIP_COLUMNS))
    _write_table(home, "raw_clips", batch, clips)
    sides = assign_splits(list(zip(clips["clip_id"], clips["label_json"].notna())), eval_fraction=1.0)
    splits = pd.DataFrame(
        {"clip_id": clips["clip_id"], "sha256": clips["sha256"], "split": clips["clip_id"].map(sides)}
    )
    _write_table(home, "clip_splits", batch, splits)
    return clips


def _train(home: Path, steps: int, train_clips: int, final_loss: float) -> dict:
    """A checkpoint folder as a trainer installs it, and the sft_checkpoint record naming it."""
    checkpoint_id = hashlib.sha256(f"steps={steps}".encode()).hexdigest()[:16]
    folder = home / "checkpoints" / f"sft-{checkpoint_id}"
    folder.mkdir(parents=True)
    save_file({"w": np.full(4, steps, dtype=np.float32)}, str(folder / "model.safetensors"))
    examples = [f"train-{i}" for i in range(train_clips)]
    losses = [[1, 3.0], [steps, final_loss]]
    record = {
        "settings": {"steps": steps},
        "losses": losses,
        "seconds": 1.0,
        "base_model": "base",
        "examples": examples,
    }
    (folder / "avdag_training.json").write_text(json.dumps(record, indent=2))
    StateStore(str(home)).put_folder(folder, f"checkpoints/{folder.name}")  # complete: its marker written last
    info = {
        "path": str(folder),
        "checkpoint_id": checkpoint_id,
        "weights_hash": model_fingerprint(str(folder)),
        "train_clips": examples,
        "losses": losses,
    }
    _write_record(home, "sft_checkpoint", info)
    _write_record(home, "checkpoint_in_service", {k: info[k] for k in ("checkpoint_id", "path", "weights_hash")})
    return info


@dataclass
class _Captioner:
    """The checkpoint's answers: the human label, with a wrong weather when `wrong_weather`."""

    model_path: str
    model_hash: str
    labels: dict[str, dict]
    wrong_weather: bool = False
    settings: GenerationSettings = GenerationSettings(max_new_tokens=64)

    def caption_stream(self, video_paths, system_prompt, user_prompt):
        for i, path in enumerate(video_paths):
            label = dict(self.labels[Path(path).stem])
            if self.wrong_weather:
                label["weather"] = next(w for w in WEATHER if w != label["weather"])
            yield i, CaptionOutput(format_label_as_answer(label), 10, 20, 30, 0.1)


def _video(source_url: str, sha256: str) -> str:
    """Where a fetch would put the clip on this node (the stand-in captioner reads only the name)."""
    return f"/scratch/{PurePosixPath(source_url).name.split('.')[0]}.mp4"


def _lineage(home: Path, *args, **kwargs):
    """`score_lineage` on the state store at `home`, fetching into a scratch folder beside it."""
    return score_lineage(StateStore(str(home)), home.parent / "scratch", *args, **kwargs)


def _caption(home: Path, clips: pd.DataFrame, checkpoint: dict, run_id: str, wrong_weather: bool = False):
    labels = {c.clip_id: json.loads(c.label_json) for c in clips.itertuples()}
    captioner = _Captioner(checkpoint["path"], checkpoint["weights_hash"], labels, wrong_weather)
    frame = caption_clips(
        captioner, clips, PROMPTS, StateStore(str(home)), "finetuned", video=_video, log=_quiet, run_id=run_id
    )
    _write_table(home, "finetuned_captions", clips["batch"].iloc[0], frame)
    return frame


class _ExactJudge:
    judge_id = "test:exact"

    def judge(self, items):
        return [JudgeVerdict(5 if i.model_answer == i.human_answer else 1, "<answer>x</answer>") for i in items]


def _score(home: Path, clips: pd.DataFrame, captions: pd.DataFrame, run_id: str) -> pd.DataFrame:
    frame, _ = score_captions(_ExactJudge(), PROMPTS, clips, captions, log=_quiet)
    frame["score_run_id"] = run_id
    _write_table(home, "finetuned_judge_scores", clips["batch"].iloc[0], frame)
    return frame


@dataclass
class _Scenario:
    home: Path
    clips: pd.DataFrame
    demo: dict
    retrain: dict
    row: pd.Series  # the fine-tuned weather score of clip-1, made with the demo checkpoint


@pytest.fixture
def scenario(tmp_path) -> _Scenario:
    """The demo's 800-step checkpoint scored; then a 60-step retrain, promoted, re-captions the batch."""
    home = tmp_path / "home"
    clips = _ingest(home, "batch-a")
    demo = _train(home, steps=800, train_clips=3, final_loss=0.41)
    scores = _score(home, clips, _caption(home, clips, demo, "caption-run-1"), "score-run-1")
    retrain = _train(home, steps=60, train_clips=103, final_loss=2.03)
    _caption(home, clips, retrain, "caption-run-2", wrong_weather=True)
    row = scores[(scores["clip_id"] == "clip-1") & (scores["field"] == "weather")].iloc[0]
    return _Scenario(home, clips, demo, retrain, row)


def test_after_a_retrain_and_a_recaption_the_chain_is_the_one_the_score_was_made_from(scenario):
    row = scenario.row
    lineage = _lineage(scenario.home, "clip-1", "weather")
    checkpoint, caption = lineage.sections["checkpoint"], lineage.sections["caption"]
    assert checkpoint["checkpoint_id"] == scenario.demo["checkpoint_id"] != scenario.retrain["checkpoint_id"]
    assert checkpoint["weights_hash"] == row["model_hash"] == scenario.demo["weights_hash"]
    assert (checkpoint["train_clips"], checkpoint["final_loss"]) == (3, 0.41)
    assert checkpoint["now_in_service"] == f"{scenario.retrain['checkpoint_id']} (differs)"
    assert checkpoint["latest_trained"] == f"{scenario.retrain['checkpoint_id']} (differs)"
    assert caption["caption_key"] == row["caption_key"] and caption["caption_run_id"] == "caption-run-1"
    assert row["score"] == 5 and row["model_answer"] == row["human_answer"] and caption["field_status"] == "ok"
    assert f'"weather": {row["human_answer"]}' in caption["raw_text"]
    assert caption["now_in_table"].startswith("another caption (differs: re-captioned since this score)")
    assert lineage.sections["score"]["score_run_id"] == "score-run-1"
    assert all(lineage.sections[s]["check"] == MATCHES for s in ("upload", "split", "caption", "checkpoint"))
    assert lineage.mismatched == []
    text = format_lineage(lineage)
    assert f"[checkpoint] {MATCHES}" in text and "every section matches the score row" in text


def test_a_checkpoint_folder_overwritten_since_the_score_is_shown_as_a_mismatch(scenario):
    weights = Path(scenario.demo["path"]) / "model.safetensors"
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(weights))
    lineage = _lineage(scenario.home, "clip-1", "weather")
    check = lineage.sections["checkpoint"]["check"]
    assert check.startswith("MISMATCH") and scenario.row["model_hash"] in check and "overwritten" in check
    assert lineage.mismatched == ["checkpoint"]
    assert "WARNING: differs from what the score recorded: checkpoint" in format_lineage(lineage)


def test_a_batch_re_ingested_since_the_score_is_shown_as_a_mismatch(scenario):
    _ingest(scenario.home, "batch-a", content="other footage")
    lineage = _lineage(scenario.home, "clip-1", "weather")
    assert lineage.mismatched == ["upload", "split"]
    assert scenario.row["clip_sha256"] in lineage.sections["upload"]["check"]
    assert "re-ingested" in lineage.sections["upload"]["check"]


def test_the_judged_caption_is_found_by_its_key_in_the_cache_or_the_table(tmp_path):
    home = tmp_path / "home"
    clips = _ingest(home, "batch-a")
    demo = _train(home, steps=800, train_clips=3, final_loss=0.41)
    scores = _score(home, clips, _caption(home, clips, demo, "caption-run-1"), "score-run-1")
    key = scores.set_index("clip_id").loc["clip-1", "caption_key"].iloc[0]
    (home / "cache" / "captions" / f"{key}.json").unlink()
    caption = _lineage(home, "clip-1", "weather").sections["caption"]
    assert caption["check"] == MATCHES and caption["found_in"].endswith("batch-a.parquet")
    assert caption["now_in_table"] == "this caption"
    _caption(home, clips, _train(home, steps=60, train_clips=103, final_loss=2.03), "caption-run-2", True)
    caption = _lineage(home, "clip-1", "weather").sections["caption"]
    assert caption["check"].startswith(f"MISMATCH: no caption with key {key}")


def test_a_clip_id_scored_in_two_batches_needs_the_batch(scenario):
    other = _ingest(scenario.home, "batch-b")
    _score(scenario.home, other, _caption(scenario.home, other, scenario.retrain, "caption-run-3"), "score-run-3")
    with pytest.raises(LineageError, match="2 batches: batch-a, batch-b; name one with --batch"):
        _lineage(scenario.home, "clip-1", "weather")
    lineage = _lineage(scenario.home, "clip-1", "weather", batch="batch-b")
    assert lineage.batch == "batch-b" and lineage.mismatched == []
    assert lineage.sections["upload"]["sha256"] == other.set_index("clip_id").loc["clip-1", "sha256"]
    assert lineage.sections["checkpoint"]["checkpoint_id"] == scenario.retrain["checkpoint_id"]
    demo = _lineage(scenario.home, "clip-1", "weather", batch="batch-a")
    assert demo.sections["checkpoint"]["checkpoint_id"] == scenario.demo["checkpoint_id"]
    with pytest.raises(LineageError, match="in batch 'batch-c'; it was scored in: batch-a, batch-b"):
        _lineage(scenario.home, "clip-1", "weather", batch="batch-c")


def test_cli_lineage_takes_a_batch_and_warns_about_a_mismatch(scenario, monkeypatch, capsys):
    monkeypatch.setenv("AVDAG_HOME", str(scenario.home))
    other = _ingest(scenario.home, "batch-b")
    _score(scenario.home, other, _caption(scenario.home, other, scenario.retrain, "caption-run-3"), "score-run-3")
    assert main(["lineage", "clip-1", "weather"]) == 2
    assert "batch-a, batch-b; name one with --batch" in capsys.readouterr().err
    assert main(["lineage", "clip-1", "weather", "--batch", "batch-a", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["checkpoint"]["checkpoint_id"] == scenario.demo["checkpoint_id"]
    assert {name: section["check"] for name, section in chain.items() if name != "score"} == dict.fromkeys(
        ("upload", "split", "caption", "checkpoint"), MATCHES
    )
    _ingest(scenario.home, "batch-a", content="other footage")
    assert main(["lineage", "clip-1", "weather", "--batch", "batch-a"]) == 0
    out, err = capsys.readouterr()
    assert "[upload] MISMATCH" in out and "differs from what the score recorded: upload, split" in err


def test_lineage_reads_the_state_store_on_s3_from_a_machine_without_the_files(scenario, s3, tmp_path):
    """The same chain from the store's copy on S3, with nothing of it on this machine's disk."""
    s3.make_bucket("lineage-state")
    s3.upload_dir(scenario.home, "lineage-state/avdag", markers=True)
    url = "s3://lineage-state/avdag"
    store = StateStore(url, storage_options(url, s3.endpoint_url))
    fresh_scratch = tmp_path / "elsewhere" / "scratch"
    lineage = score_lineage(store, fresh_scratch, "clip-1", "weather", batch="batch-a")
    checkpoint, caption = lineage.sections["checkpoint"], lineage.sections["caption"]
    assert lineage.mismatched == [] and checkpoint["checkpoint_id"] == scenario.demo["checkpoint_id"]
    assert checkpoint["weights_hash"] == scenario.row["model_hash"]
    assert caption["found_in"] == f"{url}/cache/captions/{scenario.row['caption_key']}.json"
    assert checkpoint["path"] == f"{url}/checkpoints/sft-{scenario.demo['checkpoint_id']}"
    assert list(fresh_scratch.rglob("model.safetensors"))  # fetched into this machine's scratch to be hashed
