"""avdag as a platform, through the real `dagster-daemon`: sensors, the run queue the shipped instance config
sets up, and runs in fresh processes, with nothing run in-process.

A fresh $AVDAG_HOME gets `avdag/dagster.yaml` as its instance config and the session's tiny model. The
daemon runs on it; the landing sensor is switched on with `dagster sensor start`; three batches (one clip
uploaded twice, byte for byte, under two ids in two batches) become ready at the same moment. The
sensors then chain everything: one clip batch run per batch, the training run (candidate, evaluation on
the eval split, blocking gate, promotion), fine-tuned captions and scores for every batch, the report.
While the training run is in flight a user launches a second one (`dagster job launch`): the run queue
holds it until the first has ended, and it then finds the checkpoint trained ("cached").

Training starts once all three batches' train clips have landed (AVDAG_TRAIN_AFTER_NEW_CLIPS = that count),
so one candidate covers the three batches; with a threshold of 1, a sensor tick that sees one batch trains on
it alone, and the next candidate (more clips) may be refused by the blocking `candidate_not_worse` gate, which
fails its run.

The negative control runs the same platform (one batch, a longer training) on an instance config without the
training stage's limit and no code changed: the user's training run then overlaps the sensor's; the
checkpoint's file lock still trains the checkpoint once.

Both are slow (many minutes on two CPU cores) and marked so: `pytest -m slow avdag_tests/defs/test_daemon_platform.py`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest

from avdag.core.common.state_store import StateStore
from avdag.core.ingest.splits import split_for
from avdag.core.reporting.published import latest_report
from avdag.defs.training.sft_checkpoint import manifest_hash
from avdag.demo.synthetic_clips import LABEL_SUFFIX, VIDEO_SUFFIX, generate_sample_batch
from avdag_tests.support.daemon import (
    Materialized,
    Platform,
    RunRow,
    instance_config_without_limit,
    mark_ready,
    overlaps,
    platform_env,
    prepare_home,
    shipped_instance_config,
    stage_limits,
)

pytestmark = pytest.mark.slow

# Batch -> synthetic seed. With the default eval fraction (0.1; a sensor cannot pass run config) these
# seeds give each batch 4 train clips and 1 eval clip out of 5 (checked in `_write_batches`).
BATCH_SEEDS = {"batch-a": 4, "batch-b": 5, "batch-c": 16}
CLIPS_PER_BATCH = 5
# One clip of batch-a uploaded again, byte for byte, as another clip id in batch-b. Both ids are on the
# train side, so the train count does not depend on which batch's run registers the content first.
DUPLICATE_SOURCE = ("batch-a", "syn-0004-0000")
DUPLICATE_COPY = ("batch-b", "dup-copy")
# Enough steps that the training run outlasts a `dagster job launch` (which starts a code server of its own,
# 7-20 s here) with room to spare; more only makes the test slower.
SFT_STEPS = 12
# The negative control needs the user's run to be *running* (dequeued, process started) before the sensor's
# ends, not just submitted: a longer first training run leaves room for that. A step takes ~0.9 s on an idle
# 2-core machine and up to ~5 s when other work shares it; with 12 steps the runs overlapped by only ~5 s.
RACING_SFT_STEPS = 30
MAX_NEW_TOKENS = 48
TIMEOUT_S = 30 * 60
POLL_S = 2.0
SETTLE_S = 45  # longer than a sensor interval (30 s): nothing new may start once the platform is done


@dataclass
class Outcome:
    """What one platform session recorded, read after it went quiet."""

    home: Path
    batches: dict[str, list[str]]
    train_clips: int
    runs: list[RunRow]
    materializations: dict[str, list[Materialized]]
    checks: dict[str, dict[str, bool]]  # run id -> check -> passed
    manual_run_id: str | None
    first_training_status_at_launch: str | None
    timings: dict[str, float] = field(default_factory=dict)

    def runs_of(self, job: str) -> list[RunRow]:
        return [r for r in self.runs if r.job == job]

    def run(self, run_id: str) -> RunRow:
        return next(r for r in self.runs if r.run_id == run_id)


def _write_batches(landing: Path, batches: dict[str, int]) -> tuple[dict[str, list[str]], int]:
    """Every clip of every batch (no `_READY` yet), the duplicate included; (clip ids per batch, unique train clips)."""
    ids = {batch: generate_sample_batch(landing, batch, CLIPS_PER_BATCH, seed=seed) for batch, seed in batches.items()}
    for batch, clip_ids in ids.items():
        sides = [split_for(c) for c in clip_ids]
        assert "eval" in sides and "train" in sides, f"seed of {batch} gives splits {sides}: pick another"
    (src_batch, src_id), (dup_batch, dup_id) = DUPLICATE_SOURCE, DUPLICATE_COPY
    if src_batch in ids and dup_batch in ids:
        assert split_for(src_id) == split_for(dup_id) == "train"
        for sub, suffix in (("videos", VIDEO_SUFFIX), ("metas", LABEL_SUFFIX)):
            shutil.copyfile(
                landing / src_batch / sub / f"{src_id}{suffix}", landing / dup_batch / sub / f"{dup_id}{suffix}"
            )
        ids[dup_batch].append(dup_id)
    unique = {c for clip_ids in ids.values() for c in clip_ids} - ({DUPLICATE_COPY[1]} if src_batch in ids else set())
    return ids, sum(split_for(c) == "train" for c in unique)


def _print(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)


def _platform_done(platform: Platform, runs: list[RunRow], batches: list[str]) -> str | None:
    """None when the platform went all the way and is idle; else what it still waits for."""
    if any(r.active for r in runs):
        return "runs in flight"
    if not any(r.job == "training_pipeline" and r.status == "SUCCESS" for r in runs):
        return "no successful training run"
    service = platform.materializations("checkpoint_in_service")
    if not service:
        return "nothing in service"
    weights = service[-1].metadata.get("weights_hash")
    scored = {m.partition: m.metadata.get("model_hash") for m in platform.materializations("finetuned_judge_scores")}
    behind = [b for b in batches if scored.get(b) != weights]
    if behind:
        return f"batches not scored with the checkpoint in service: {behind}"
    if not any(r.job == "reporting_pipeline" and r.status == "SUCCESS" for r in runs):
        return "no successful reporting run"
    return None


def _run_platform(
    home: Path,
    model_dir: str,
    instance_config: str,
    batches: dict[str, int],
    *,
    stop_after_training: bool,
    sft_steps: int = SFT_STEPS,
) -> Outcome:
    """Start the daemon on a fresh home, make `batches` ready at once, launch a second training run while the
    first is in flight, and wait until the platform is done (or, with `stop_after_training`, until both
    training runs have ended)."""
    started = time.monotonic()
    landing = home / "landing"
    prepare_home(home, Path(model_dir), instance_config)
    ids, train_clips = _write_batches(landing, batches)
    _print(started, f"wrote {sum(map(len, ids.values()))} clips in {len(ids)} batches; {train_clips} train clips")
    env = platform_env(
        home,
        landing_url=str(landing),
        sft_steps=sft_steps,
        max_new_tokens=MAX_NEW_TOKENS,
        # Training starts once every batch's train clips have landed: one candidate for the three batches.
        # (With 1, a tick that sees one batch trains on it alone, and the next candidate may be refused by
        # the blocking gate, which fails its run.)
        train_after_new_clips=train_clips,
    )
    timings: dict[str, float] = {}
    manual_run_id = None
    status_at_launch = None
    with Platform(home, env) as platform:
        timings["daemon_live_s"] = platform.start_daemon()
        _print(started, f"dagster-daemon live after {timings['daemon_live_s']:.0f}s")
        sensor_started = time.monotonic()
        platform.start_sensor("landing_zone_sensor")
        _print(started, f"landing_zone_sensor started ({time.monotonic() - sensor_started:.0f}s)")
        ready_wall = mark_ready(landing, ids)
        ready_at = time.monotonic()
        _print(started, f"_READY written for {sorted(ids)}")

        seen: dict[str, str] = {}
        while True:
            if not platform.daemon_alive():
                pytest.fail(f"dagster-daemon died:\n{platform.daemon_log_tail()}")
            runs = platform.runs()
            for r in runs:
                if seen.get(r.run_id) != r.status:
                    seen[r.run_id] = r.status
                    _print(started, f"{r.label():<48} {r.status}")
            failed = [r for r in runs if r.status in ("FAILURE", "CANCELED")]
            if failed:
                details = "\n\n".join(f"{r.label()}: {platform.run_failure(r.run_id)}" for r in failed)
                pytest.fail(f"runs failed:\n{details}\n\ndaemon log:\n{platform.daemon_log_tail(2000)}")
            trainings = [r for r in runs if r.job == "training_pipeline"]
            if manual_run_id is None and any(r.active for r in trainings):
                # A user clicks Materialize on the training job while the sensor's training run is in flight.
                first = next(r for r in trainings if r.active)
                manual_run_id = str(uuid.uuid4())
                launch_started = time.monotonic()
                platform.launch("training_pipeline", manual_run_id, tags={"avdag/launched_by": "test-user"})
                status_at_launch = next(r for r in platform.runs() if r.run_id == first.run_id).status
                timings["manual_launch_cli_s"] = time.monotonic() - launch_started
                _print(
                    started,
                    f"launched training run {manual_run_id[:8]} by hand "
                    f"({timings['manual_launch_cli_s']:.0f}s); {first.label()} is {status_at_launch}",
                )
                continue
            if stop_after_training:
                done = (
                    None
                    if manual_run_id and len(trainings) >= 2 and not any(r.active for r in trainings)
                    else "training runs in flight"
                )
            else:
                done = _platform_done(platform, runs, list(ids))
            if done is None:
                break
            if time.monotonic() - ready_at > TIMEOUT_S:
                pytest.fail(f"not done after {TIMEOUT_S}s: {done}\n\ndaemon log:\n{platform.daemon_log_tail(3000)}")
            time.sleep(POLL_S)
        timings["ready_to_done_s"] = time.monotonic() - ready_at
        _print(started, f"done {timings['ready_to_done_s']:.0f}s after the batches became ready")
        if not stop_after_training:
            # Quiet means quiet: no sensor finds anything more to do.
            count = len(runs)
            time.sleep(SETTLE_S)
            runs = platform.runs()
            assert len(runs) == count, f"runs started after the platform was done: {[r.label() for r in runs[count:]]}"
        assets = (
            "raw_clips",
            "clip_splits",
            "split_manifest",
            "sft_checkpoint",
            "candidate_evaluation",
            "checkpoint_in_service",
            "finetuned_captions",
            "finetuned_judge_scores",
            "score_comparison",
        )
        outcome = Outcome(
            home=home,
            batches=ids,
            train_clips=train_clips,
            runs=runs,
            materializations={a: platform.materializations(a) for a in assets},
            checks={r.run_id: platform.check_evaluations(r.run_id) for r in runs},
            manual_run_id=manual_run_id,
            first_training_status_at_launch=status_at_launch,
            timings=timings,
        )
    _add_timings(outcome, ready_wall)
    timings["total_wall_s"] = time.monotonic() - started
    print("timings: " + json.dumps({k: round(v, 1) for k, v in outcome.timings.items()}), flush=True)
    return outcome


def _add_timings(outcome: Outcome, ready_wall: float) -> None:
    batch_runs = [r for r in outcome.runs_of("clip_batch_pipeline") if r.end]
    if batch_runs:
        outcome.timings["ready_to_first_batch_run_end_s"] = min(r.end for r in batch_runs) - ready_wall
    for r in outcome.runs_of("training_pipeline"):
        if r.start and r.end:
            who = "manual" if r.run_id == outcome.manual_run_id else "sensor"
            outcome.timings[f"training_run_{who}_s"] = r.end - r.start
            outcome.timings[f"training_run_{who}_queued_s"] = r.start - r.created


# -- the platform, as shipped ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform_run(tmp_path_factory, tiny_model_path) -> Outcome:
    home = tmp_path_factory.mktemp("daemon_platform")
    config = shipped_instance_config()
    assert stage_limits(config).get("training") == 1, "the shipped instance config should allow one training run"
    return _run_platform(home, tiny_model_path, config, BATCH_SEEDS, stop_after_training=False)


def _in_service(outcome: Outcome) -> Materialized:
    return outcome.materializations["checkpoint_in_service"][-1]


def test_every_run_succeeded_and_each_stage_ran(platform_run):
    runs = platform_run.runs
    assert runs and all(r.status == "SUCCESS" for r in runs), [(r.label(), r.status) for r in runs]
    first_runs = [r for r in platform_run.runs_of("clip_batch_pipeline") if "avdag/batch_fingerprint" in r.tags]
    assert sorted(r.partition for r in first_runs) == sorted(platform_run.batches), "one landing run per batch"
    assert len(platform_run.runs_of("training_pipeline")) == 2  # the sensor's and the user's
    assert platform_run.runs_of("reporting_pipeline")


def test_one_training_per_checkpoint_id(platform_run):
    checkpoints = platform_run.materializations["sft_checkpoint"]
    trained = [m.metadata["checkpoint_id"] for m in checkpoints if m.metadata["status"] == "trained"]
    assert trained and len(trained) == len(set(trained)), f"a checkpoint id trained twice: {trained}"
    cached = [m for m in checkpoints if m.metadata["status"] == "cached"]
    assert [m.run_id for m in cached] == [platform_run.manual_run_id], "the user's run reuses the checkpoint"
    assert {m.metadata["checkpoint_id"] for m in cached} <= set(trained)


def test_the_run_queue_kept_the_two_training_runs_apart(platform_run):
    sensor_run, manual_run = sorted(platform_run.runs_of("training_pipeline"), key=lambda r: r.start)
    assert manual_run.run_id == platform_run.manual_run_id
    # The user's run was submitted while the sensor's was in flight ...
    assert platform_run.first_training_status_at_launch in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
    assert manual_run.created < sensor_run.end
    # ... and started only after it had ended.
    assert not overlaps(sensor_run, manual_run)
    assert manual_run.start >= sensor_run.end


def test_the_promoted_checkpoint_trained_on_a_manifest_that_passed_the_leak_check(platform_run):
    service = _in_service(platform_run)
    checkpoint_id = service.metadata["checkpoint_id"]
    trained = next(
        m
        for m in platform_run.materializations["sft_checkpoint"]
        if m.metadata["checkpoint_id"] == checkpoint_id and m.metadata["status"] == "trained"
    )
    assert trained.metadata["train_clips"] == platform_run.train_clips
    assert service.metadata["weights_hash"] == trained.metadata["weights_hash"]
    # The run that trained it materialized the split manifest and its blocking leak check passed there.
    manifests = [m for m in platform_run.materializations["split_manifest"] if m.run_id == trained.run_id]
    assert manifests, "the training run did not materialize split_manifest"
    assert platform_run.checks[trained.run_id].get("split_manifest:no_train_eval_leak") is True
    assert all(
        platform_run.checks[r.run_id].get("split_manifest:no_train_eval_leak") is not False for r in platform_run.runs
    )
    # That manifest is the one the checkpoint names (no batch landed since, so it is the stored one).
    stored = pd.read_parquet(platform_run.home / "assets" / "split_manifest.parquet")
    assert manifest_hash(stored) == trained.metadata["split_manifest_hash"]
    record = json.loads((platform_run.home / "assets" / "checkpoint_in_service.json").read_text())
    assert record["split_manifest_hash"] == trained.metadata["split_manifest_hash"]
    assert platform_run.checks[trained.run_id].get("candidate_evaluation:candidate_not_worse") is True


def test_every_finetuned_caption_and_score_comes_from_the_promoted_checkpoint(platform_run):
    weights = _in_service(platform_run).metadata["weights_hash"]
    assets = platform_run.home / "assets"
    captions = pd.concat([pd.read_parquet(p) for p in sorted((assets / "finetuned_captions").glob("*.parquet"))])
    assert set(captions["batch"]) == set(platform_run.batches)
    assert set(captions["model_hash"]) == {weights}
    scores = pd.concat([pd.read_parquet(p) for p in sorted((assets / "finetuned_judge_scores").glob("*.parquet"))])
    assert len(scores) and set(scores["model_hash"]) == {weights}
    latest = {}
    for m in platform_run.materializations["finetuned_judge_scores"]:
        latest[m.partition] = m.metadata["model_hash"]
    assert latest == {batch: weights for batch in platform_run.batches}


def test_the_duplicate_is_one_clip(platform_run):
    assets = platform_run.home / "assets"
    clips = pd.concat([pd.read_parquet(p) for p in sorted((assets / "raw_clips").glob("*.parquet"))])
    quarantine = pd.concat([pd.read_parquet(p) for p in sorted((assets / "clip_quarantine").glob("*.parquet"))])
    (src_batch, src_id), (dup_batch, dup_id) = DUPLICATE_SOURCE, DUPLICATE_COPY
    source_video = platform_run.home / "landing" / src_batch / "videos" / f"{src_id}{VIDEO_SUFFIX}"
    sha = clips.loc[clips["clip_id"].isin([src_id, dup_id]), "sha256"]
    assert len(sha) == 1, f"the duplicated content is {len(sha)} clip rows: {clips[clips['sha256'].isin(sha)]}"
    kept = clips[clips["sha256"] == sha.iloc[0]].iloc[0]
    duplicates = quarantine[quarantine["check"] == "duplicate"]
    other_batch, other_id = (dup_batch, dup_id) if kept["batch"] == src_batch else (src_batch, src_id)
    # The later upload's video is quarantined as a duplicate of the kept clip, and its label goes with it.
    assert sorted(Path(f).name for f in duplicates["file"]) == sorted(
        [f"{other_id}{LABEL_SUFFIX}", f"{other_id}{VIDEO_SUFFIX}"]
    )
    assert set(duplicates["batch"]) == {other_batch}
    video_row = duplicates[duplicates["file"].str.endswith(VIDEO_SUFFIX)].iloc[0]
    assert f"same content as clip {kept['clip_id']} of batch {kept['batch']}" in video_row["reason"]
    with sqlite3.connect(platform_run.home / "avdag.sqlite") as db:  # the default AVDAG_DB_URL
        query = "SELECT batch, clip_id FROM {} WHERE sha256 = ?"
        sources = db.execute(query.format("avdag_clip_sources"), (kept["sha256"],)).fetchall()
        owners = db.execute(query.format("avdag_clips"), (kept["sha256"],)).fetchall()
    assert sorted(sources) == sorted([(src_batch, src_id), (dup_batch, dup_id)])
    assert owners == [(kept["batch"], kept["clip_id"])]
    assert (
        source_video.read_bytes()
        == (platform_run.home / "landing" / dup_batch / "videos" / f"{dup_id}{VIDEO_SUFFIX}").read_bytes()
    )
    # clip splits: the content is on one side, once
    splits = platform_run.materializations["clip_splits"]
    assert sum(int(m.metadata["train"]) for m in _latest_by_partition(splits).values()) == platform_run.train_clips


def _latest_by_partition(materializations: list[Materialized]) -> dict[str, Materialized]:
    latest = {}
    for m in materializations:
        latest[m.partition] = m
    return latest


def test_the_published_report_is_one_run_and_the_checkpoint_in_service(platform_run):
    store = StateStore(str(platform_run.home))
    files = latest_report(store)
    assert PurePosixPath(files.json).parent == PurePosixPath(files.png).parent == PurePosixPath(files.folder)
    assert store.read_bytes(files.png).startswith(b"\x89PNG")
    report = store.read_json(files.json)
    made_by = platform_run.run(report["made_by_run"])
    assert made_by.job == "reporting_pipeline" and made_by.status == "SUCCESS"
    service = _in_service(platform_run)
    assert report["weights_hash"] == service.metadata["weights_hash"]
    assert report["checkpoint_in_service"] == service.metadata["checkpoint_id"]
    assert report["batches_left_out"] == []
    assert report["eval_clips"] == sum(split_for(c) == "eval" for ids in platform_run.batches.values() for c in ids)


# -- negative control: the instance config without the training stage's limit ------------------------


@pytest.fixture(scope="module")
def racing_run(tmp_path_factory, tiny_model_path) -> Outcome:
    """The same platform and steps on one batch, with the training limit removed from the instance config
    (no code changed). Stops once both training runs have ended."""
    home = tmp_path_factory.mktemp("daemon_platform_no_limit")
    config = instance_config_without_limit("training")
    assert "training" not in stage_limits(config) and stage_limits(config).get("reporting") == 1
    batches = {"batch-a": BATCH_SEEDS["batch-a"]}
    return _run_platform(home, tiny_model_path, config, batches, stop_after_training=True, sft_steps=RACING_SFT_STEPS)


def test_without_the_queue_limit_the_training_runs_overlap(racing_run):
    trainings = racing_run.runs_of("training_pipeline")
    assert len(trainings) == 2 and all(r.status == "SUCCESS" for r in trainings), [
        (r.label(), r.status) for r in trainings
    ]
    first, second = sorted(trainings, key=lambda r: r.start)
    shared = min(first.end, second.end) - max(first.start, second.start)
    print(f"training runs: {first.label()} ran {first.end - first.start:.1f}s, {second.label()} started ", end="")
    print(f"{second.start - first.start:.1f}s after it; both in flight for {shared:.1f}s")
    assert overlaps(first, second), "without the run queue's training limit the two training runs should overlap"


def test_without_the_queue_limit_the_checkpoint_lock_still_trains_once(racing_run):
    statuses = sorted(m.metadata["status"] for m in racing_run.materializations["sft_checkpoint"])
    ids = {m.metadata["checkpoint_id"] for m in racing_run.materializations["sft_checkpoint"]}
    assert statuses == ["cached", "trained"] and len(ids) == 1, statuses
