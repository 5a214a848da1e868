"""avdag across Celery workers with nothing passing through local disk (issue 13).

Real Redis (broker), real Postgres (the Dagster instance from `avdag/dagster-production.yaml`, and
`AVDAG_DB_URL` in a schema of its own), the landing zone and the state store on the loopback S3. The judge
is an OpenAI-compatible HTTP server, and so is the captioner of the base model (`AVDAG_VLM_BASE_URLS`: the
tiny model's answers do not parse, which would leave the judge nothing to do); training and fine-tuned
captions run the tiny model. Steps run on `dagster-celery` workers, each in a folder and an empty
`$AVDAG_HOME` of its own: `cpu` listens on the CPU queue and the `training` queue, `gpu` on the `gpu`
queue (captioning). So ingest runs on one worker, captioning on the other and training back on the first:
every hand-off crosses workers. A separate process launches each run (`avdag.definitions`, the
Definitions every deployment loads), as a run worker would.

1. Two batches sharing one video (the real clip) run `clip_batch_pipeline` at once: both succeed, the
   video is one clip, the registry records the second upload as another source of it.
2. The first batch again, on two new workers with new empty homes: nothing is captioned (the caption
   cache on S3), the judge is not called (its verdict cache in Postgres).
3. `training_pipeline` (promotion forced) on the `cpu` worker: one checkpoint; the first batch again:
   its fine-tuned captions, made on the `gpu` worker, name that checkpoint's weights hash.
Every worker's home holds at most `scratch/` afterwards.

The negative control runs step 1 on the layout before issue 13: each worker keeps its state in a folder of
its own (declared shared with `AVDAG_STATE_IS_SHARED=1`, which is false here, to get past the guard at
load). Ingest succeeds on `cpu`; captioning on `gpu` cannot find the clips and both runs fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from avdag.core.common.labels import format_label_as_answer
from avdag.core.ingest.landing import LABEL_SUFFIX, VIDEO_SUFFIX
from avdag.core.ingest.registry import ClipRegistry
from avdag.defs.pipeline.partitions import clip_batches
from avdag.defs.pipeline.pools import GPU_POOL, TRAINING_QUEUE
from avdag.demo.sample_batch import REAL_CLIP_DIR, REAL_CLIP_ID, write_sample_batch
from avdag_tests.defs.test_celery_execution import Worker, redis_url  # noqa: F401 (a fixture)
from avdag_tests.support.openai_stub_server import OpenAIStubServer
from avdag_tests.support.pipeline_helpers import small_run_config, state_with_tiny_model
from avdag_tests.support.postgres_server import isolated_schema
from avdag_tests.support.production_instance import PRODUCTION_CONFIG, production_instance_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CPU_QUEUE = "cpu"
# worker -> the queues it listens on; each queue has one worker, so a step's queue says where it must run
QUEUES = {"cpu": (CPU_QUEUE, TRAINING_QUEUE), "gpu": (GPU_POOL,)}
WORKER_OF = {queue: worker for worker, queues in QUEUES.items() for queue in queues}
BATCHES = ("drive-a", "drive-b")
LANDING = "s3://fleet-landing/landing"
STATE = "s3://avdag-state/prod"
PROMOTE_ANYWAY = {"ops": {"candidate_evaluation": {"config": {"max_regression": 5.0}}}}
RUN_TIMEOUT_S = 900
# The VLM server answers every clip with the real clip's label: parsed captions, for the judge to score.
VLM_ANSWER = format_label_as_answer(json.loads((REAL_CLIP_DIR / f"{REAL_CLIP_ID}{LABEL_SUFFIX}").read_text()))
# A run worker's part: load avdag's Definitions by module, execute one job (its steps go to the broker).
LAUNCH = """
import json, sys
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
job_name, partition, run_config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
job = ReconstructableRepository.for_module("avdag.definitions", "defs").get_reconstructable_job(job_name)
with dg.DagsterInstance.get() as instance:
    tags = {"dagster/partition": partition} if partition else None
    result = dg.execute_job(job, instance, run_config=run_config, tags=tags, raise_on_error=False)
    print(json.dumps({"run_id": result.run_id, "success": result.success}))
"""


class Cluster:
    """The shared services' environment, and per generation a CPU and a GPU worker, each with a folder, an
    `$AVDAG_HOME` and a `$DAGSTER_HOME` (the production config) of its own, as on machines of their own."""

    def __init__(self, root: Path, env: dict[str, str], config: Path):
        self.root, self.env, self.config = root, env, config
        self.workers: list[Worker] = []
        self.launchers: list[subprocess.Popen] = []
        self.homes: list[Path] = []

    def start_workers(self, generation: str, local_state: bool = False) -> None:
        """A `cpu` and a `gpu` worker; with `local_state`, each keeps its state in its own home (the old layout)."""
        for name, queues in QUEUES.items():
            home = self.root / f"{name}-{generation}-home"
            self.homes.append(home)
            dagster_home = self.root / f"{name}-{generation}-dagster"
            dagster_home.mkdir()
            shutil.copy(PRODUCTION_CONFIG, dagster_home / "dagster.yaml")
            env = {**self.env, "AVDAG_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
            if local_state:
                env.update(AVDAG_STATE_URL=str(home / "state"), AVDAG_STATE_IS_SHARED="1")
            self.workers.append(Worker(name, queues, env, self.root / f"{name}-{generation}", self.config))

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def stop(self) -> None:
        """Every launcher still running (after a failure), then the workers."""
        for launcher in self.launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait(timeout=10)
        self.stop_workers()

    def launch(self, job: str, partition: str | None, run_config: dict | None) -> subprocess.Popen:
        launcher = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, job, partition or "", json.dumps(run_config or {})],
            cwd=self.root / "launcher",
            env={**self.env, "AVDAG_HOME": str(self.root / "launcher-home")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.launchers.append(launcher)
        return launcher

    def finish(self, launcher: subprocess.Popen, succeed: bool = True) -> str:
        """The run id of a launched run, which must have succeeded (or failed, when not `succeed`)."""
        try:
            out, err = launcher.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            launcher.kill()
            out, err = launcher.communicate()
        tails = "\n".join(worker.tail() for worker in self.workers)
        lines = out.strip().splitlines()
        assert launcher.returncode == 0 and lines, f"launcher rc {launcher.returncode}\n{err[-4000:]}\n{tails}"
        launched = json.loads(lines[-1])
        assert launched["success"] == succeed, f"run {launched['run_id']}: {launched}\n{err[-4000:]}\n{tails}"
        return launched["run_id"]

    def run(self, job: str, partition: str | None = None, run_config: dict | None = None) -> str:
        return self.finish(self.launch(job, partition, run_config))


def _placed_by_queue(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[str, str]]:
    """Where the run's steps ran; every step must have run on the worker that listens on its queue."""
    placed = _where_steps_ran(instance, run_id)
    assert all(WORKER_OF[queue] == taker for queue, taker in placed.values()), placed
    return placed


def _where_steps_ran(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[str, str]]:
    """step -> (the queue dagster-celery sent it to, the worker that took it), from the run's own events."""
    queues, takers = {}, {}
    for event in instance.all_logs(run_id):
        message = event.message or ""
        if message.startswith("Submitting celery task for step"):
            queues[event.step_key] = message.rsplit('to queue "', 1)[1].split('"')[0]
        elif "in celery worker" in message and event.dagster_event is not None:
            hostname = event.dagster_event.engine_event_data.metadata["Celery worker"].value
            takers[event.step_key] = hostname.split("@")[0]
    return {step: (queue, takers.get(step)) for step, queue in queues.items()}


def _metadata(instance: dg.DagsterInstance, run_id: str, asset: str) -> dict:
    """The metadata of `asset`'s materialization in that run."""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = event.asset_materialization
        if materialization.asset_key == dg.AssetKey(asset):
            return {key: value.value for key, value in materialization.metadata.items()}
    raise AssertionError(f"run {run_id} did not materialize {asset}")


def _video(batch_root: Path, clip_id: str) -> Path:
    return batch_root / "videos" / f"{clip_id}{VIDEO_SUFFIX}"


@dataclass
class Deployment:
    """The services' side of a test: the cluster (no worker yet), the instance's environment, the stub servers."""

    cluster: Cluster
    dagster_env: dict[str, str]
    db_url: str
    ids: dict[str, list[str]]
    real_video: bytes
    judge: OpenAIStubServer
    vlm: OpenAIStubServer

    def stop(self) -> None:
        self.cluster.stop()
        self.judge.stop()
        self.vlm.stop()


def _deploy(tmp_path: Path, monkeypatch, postgres_url: str, s3, broker_url: str, tiny_model_path: str) -> Deployment:
    """Both batches on the S3 landing zone, the tiny model in the S3 state, a new instance and database."""
    for bucket in ("fleet-landing", "avdag-state"):
        s3.make_bucket(bucket)
    ids = {}
    for seed, batch in enumerate(BATCHES):
        ids[batch] = write_sample_batch(tmp_path / "landing", batch, n_synthetic=2, seed=seed)
        s3.upload_dir(tmp_path / "landing" / batch, f"fleet-landing/landing/{batch}")
    real_video = _video(tmp_path / "landing" / BATCHES[0], REAL_CLIP_ID).read_bytes()
    assert _video(tmp_path / "landing" / BATCHES[1], REAL_CLIP_ID).read_bytes() == real_video  # one video, twice
    state_with_tiny_model(STATE, tiny_model_path, s3.endpoint_url)

    dagster_env = production_instance_env(postgres_url, s3, tmp_path / "dagster")
    for name, value in dagster_env.items():
        monkeypatch.setenv(name, value)  # this process reads the same instance
    db_url = isolated_schema(postgres_url)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AVDAG_", "OPENAI_"))}
    judge = OpenAIStubServer(lambda request: "Close enough. <answer>4</answer>").start()
    vlm = OpenAIStubServer(lambda request: VLM_ANSWER).start()
    env.update(
        AVDAG_EXECUTOR="celery",
        AVDAG_CELERY_BROKER_URL=broker_url,
        AVDAG_CELERY_QUEUE=CPU_QUEUE,
        AVDAG_STATE_URL=STATE,
        AVDAG_LANDING_URL=LANDING,
        AVDAG_S3_ENDPOINT_URL=s3.endpoint_url,
        AVDAG_DB_URL=db_url,
        AVDAG_VLM_BASE_URLS=vlm.base_url,
        AVDAG_MAX_NEW_TOKENS="48",
        AVDAG_SFT_STEPS="3",
        OPENAI_API_KEY="test",
        OPENAI_BASE_URL=judge.base_url,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",  # dagster-celery starts `celery` from PATH
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    worker_config = {"broker": broker_url, "backend": broker_url, "config_source": {"worker_redirect_stdouts": False}}
    config = tmp_path / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": worker_config}}))
    (tmp_path / "launcher").mkdir()
    cluster = Cluster(tmp_path, env, config)
    return Deployment(cluster, dagster_env, db_url, ids, real_video, judge, vlm)


def test_batches_training_and_reruns_on_celery_workers_share_nothing_but_s3_and_postgres(
    tmp_path,
    monkeypatch,
    postgres_url,
    s3,
    redis_url,  # noqa: F811 (the fixture imported above)
    tiny_model_path,
):
    started = time.monotonic()
    deployment = _deploy(tmp_path, monkeypatch, postgres_url, s3, redis_url, tiny_model_path)
    cluster, dagster_env, db_url, ids = deployment.cluster, deployment.dagster_env, deployment.db_url, deployment.ids
    real_video, judge, vlm = deployment.real_video, deployment.judge, deployment.vlm
    timings = {}
    try:
        with dg.DagsterInstance.from_config(dagster_env["DAGSTER_HOME"]) as instance:
            instance.add_dynamic_partitions(clip_batches.name, list(BATCHES))

            # 1. two batches at once, each step on the worker of its queue
            cluster.start_workers("first")
            launchers = [cluster.launch("clip_batch_pipeline", batch, small_run_config()) for batch in BATCHES]
            batch_runs = [cluster.finish(launcher) for launcher in launchers]
            timings["two batches"] = time.monotonic() - started
            for placed in [_placed_by_queue(instance, run_id) for run_id in batch_runs]:
                assert placed["raw_clips"] == (CPU_QUEUE, "cpu") and placed["baseline_captions"] == ("gpu", "gpu")
            quarantined = {
                batch: _metadata(instance, run_id, "clip_quarantine") for batch, run_id in zip(BATCHES, batch_runs)
            }
            duplicates = {batch: meta.get("quarantined_duplicate", 0) for batch, meta in quarantined.items()}
            # whichever batch registered it second quarantines the video, and its label with it
            assert sorted(duplicates.values()) == [0, 2], duplicates
            clips = {
                batch: _metadata(instance, run_id, "raw_clips")["clips"] for batch, run_id in zip(BATCHES, batch_runs)
            }
            assert sum(clips.values()) == len(ids[BATCHES[0]]) + len(ids[BATCHES[1]]) - 1
            sources = ClipRegistry(db_url).sources(hashlib.sha256(real_video).hexdigest())
            assert sorted(batch for batch, _, _ in sources) == sorted(BATCHES)
            assert {clip_id for _, clip_id, _ in sources} == {REAL_CLIP_ID}
            first_scores = _metadata(instance, batch_runs[0], "baseline_judge_scores")
            assert first_scores["judge_calls"] > 0 and first_scores["scores"] > 0, first_scores

            # 2. the first batch again, on new workers with empty homes: everything comes from the caches
            cluster.stop_workers()
            cluster.start_workers("second")
            calls_before, captioned_before = len(judge.requests), len(vlm.requests)
            rerun = cluster.run("clip_batch_pipeline", BATCHES[0], small_run_config())
            timings["re-run"] = time.monotonic() - started
            assert _metadata(instance, rerun, "baseline_captions")["computed_now"] == 0
            assert len(vlm.requests) == captioned_before
            _placed_by_queue(instance, rerun)
            rescored = _metadata(instance, rerun, "baseline_judge_scores")
            assert rescored["judge_calls"] == 0 and len(judge.requests) == calls_before
            assert rescored["scores"] == first_scores["scores"]

            # 3. training on the GPU worker, then fine-tuned captions with its checkpoint
            training = cluster.run("training_pipeline", None, PROMOTE_ANYWAY)
            assert _placed_by_queue(instance, training)["sft_checkpoint"] == (TRAINING_QUEUE, "cpu")
            checkpoint = json.loads(s3.fs().cat_file("avdag-state/prod/assets/checkpoint_in_service.json"))
            stored = s3.fs().find("avdag-state/prod/checkpoints")
            complete = {key.split("/")[3] for key in stored if key.endswith("/_COMPLETE")}
            assert complete == {f"sft-{checkpoint['checkpoint_id']}"}, stored
            tuned = cluster.run("clip_batch_pipeline", BATCHES[0], small_run_config())
            timings["training and fine-tuned captions"] = time.monotonic() - started
            assert _placed_by_queue(instance, tuned)["finetuned_captions"] == ("gpu", "gpu")
            tuned_captions = _metadata(instance, tuned, "finetuned_captions")
            assert tuned_captions["weights_hash"] == tuned_captions["model_hash"] == checkpoint["weights_hash"]
            assert _metadata(instance, tuned, "baseline_captions")["computed_now"] == 0
    finally:
        deployment.stop()

    # 4. no worker kept anything but node-local scratch copies
    kept = {home.name: sorted(p.name for p in home.iterdir()) for home in cluster.homes if home.exists()}
    assert all(set(names) <= {"scratch"} for names in kept.values()), kept
    # and neither the launcher nor the workers wrote to the launcher's disk
    assert not (tmp_path / "launcher-home").exists()
    assert [p.name for p in (tmp_path / "dagster").rglob("*")] == ["dagster.yaml"]
    seconds = {stage: round(at) for stage, at in timings.items()}
    print(f"many machines: done after {seconds}s; first batch's judge calls {first_scores['judge_calls']}")


def test_the_same_runs_on_worker_local_state_fail_at_the_first_hand_off(
    tmp_path,
    monkeypatch,
    postgres_url,
    s3,
    redis_url,  # noqa: F811 (the fixture imported above)
    tiny_model_path,
):
    """Negative control: step 1 above on the layout before issue 13 (state on each worker's own disk) fails."""
    deployment = _deploy(tmp_path, monkeypatch, postgres_url, s3, redis_url, tiny_model_path)
    cluster = deployment.cluster
    try:
        with dg.DagsterInstance.from_config(deployment.dagster_env["DAGSTER_HOME"]) as instance:
            instance.add_dynamic_partitions(clip_batches.name, list(BATCHES))
            cluster.start_workers("local", local_state=True)
            launchers = [cluster.launch("clip_batch_pipeline", batch, small_run_config()) for batch in BATCHES]
            failed_runs = [cluster.finish(launcher, succeed=False) for launcher in launchers]
            for run_id in failed_runs:
                assert _placed_by_queue(instance, run_id)["raw_clips"] == (CPU_QUEUE, "cpu")
                failures = {
                    event.step_key: event.dagster_event.step_failure_data.error
                    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
                }
                # the first step on the other worker: raw_clips' stored value is on the cpu worker's disk
                assert "baseline_captions" in failures, failures
                error = failures["baseline_captions"]
                messages = [error.message] + [cause.message for cause in _causes(error)]
                assert any("MissingStoredValueError" in message for message in messages), messages
            assert deployment.vlm.requests == [] and deployment.judge.requests == []  # nothing was captioned
    finally:
        deployment.stop()
    print(f"negative control: both runs failed at baseline_captions on the gpu worker: {failed_runs}")


def _causes(error):
    """The chain of a serialized step error's causes."""
    while error.cause is not None:
        error = error.cause
        yield error
