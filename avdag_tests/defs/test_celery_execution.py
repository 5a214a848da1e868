"""Steps on real Celery workers (AVDAG_EXECUTOR=celery), the GPU step only on a worker of the `gpu` queue.

Everything is real and on this machine: Redis as the broker, two `dagster-celery worker` processes (each in
a folder of its own), the Dagster instance from avdag's production config (Postgres storage, compute logs on
a loopback S3), avdag's state on that S3. The job is `avdag_tests/support/celery_smoke.py`: avdag's executor
and GPU queue tag on three small steps. A separate process launches the run, as a run worker would.

First only the CPU worker (default queue) runs: the GPU step's task waits in the broker, untouched. Then a
worker on the `gpu` queue starts and takes it. Each step's metadata says which process ran it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import redis
import yaml

from avdag_tests.support.celery_smoke import WORKER_VAR
from avdag_tests.support.postgres_server import isolated_schema
from avdag_tests.support.production_instance import compute_logs, production_instance_env
from avdag_tests.support.redis_server import RedisServer, RedisUnavailable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEFAULT_QUEUE = "dagster"  # AVDAG_CELERY_QUEUE's default
STEPS = ("prepared", "on_gpu", "summarized")
STEP_START = dg.DagsterEventType.STEP_START


@pytest.fixture(scope="module")
def redis_url():
    """A throwaway Redis; without Debian's redis-server this fails, never skips: `make test` installs it."""
    try:
        with RedisServer() as server:
            yield server.url
    except RedisUnavailable as error:
        pytest.fail(str(error), pytrace=False)


class Worker:
    """`dagster-celery worker start` on its queues, one task at a time, in a session and folder of its own."""

    def __init__(self, name: str, queues: str | tuple[str, ...], env: dict[str, str], folder: Path, config: Path):
        self.name, self.folder = name, folder
        folder.mkdir()
        self.log = folder / "worker.log"
        argv = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config)]
        # one comma-separated -q: dagster-celery turns repeated -q into repeated -Q, of which Celery 5 keeps the last
        argv += ["-q", queues if isinstance(queues, str) else ",".join(queues), "-n", name, "--", "--concurrency=1"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=folder,
                env={**env, WORKER_VAR: name},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL, to the worker's process group: the CLI and celery."""
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=wait_s)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def tail(self) -> str:
        return f"--- {self.name} worker ---\n{self.log.read_text(errors='replace')[-3000:]}"


def _pending(redis_url: str, queue: str) -> int:
    """Tasks waiting in a queue: kombu's Redis transport keeps them in lists named after it (one per priority)."""
    client = redis.Redis.from_url(redis_url)
    return sum(client.llen(key) for key in client.scan_iter(f"{queue}*") if client.type(key) == b"list")


def _messages(instance: dg.DagsterInstance) -> tuple[str | None, list]:
    records = instance.get_run_records(limit=1)
    if not records:
        return None, []
    run_id = records[0].dagster_run.run_id
    return run_id, instance.all_logs(run_id)


def _recorded_where(instance: dg.DagsterInstance, step: str) -> dict:
    """The metadata the step's materialization carries: where it ran."""
    event = instance.get_latest_materialization_event(dg.AssetKey(step))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def _wait_for(instance, text: str, timeout_s: float, workers: list[Worker], launcher: subprocess.Popen) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, events = _messages(instance)
        if any(text in (event.message or "") for event in events):
            return events
        if launcher.poll() is not None:
            break
        time.sleep(0.5)
    logs = "\n".join(worker.tail() for worker in workers)
    raise AssertionError(f"no event saying {text!r} within {timeout_s:.0f}s (launcher rc {launcher.poll()})\n{logs}")


def test_steps_run_on_celery_workers_and_the_gpu_step_only_on_a_gpu_worker(
    tmp_path, monkeypatch, postgres_url, s3, redis_url
):
    started = time.monotonic()
    dagster_env = production_instance_env(postgres_url, s3, tmp_path / "dagster")
    for name, value in dagster_env.items():
        monkeypatch.setenv(name, value)  # this process reads the same instance
    env = {name: value for name, value in os.environ.items() if not name.startswith("AVDAG_")}
    env.update(
        AVDAG_HOME=str(tmp_path / "home"),
        AVDAG_EXECUTOR="celery",
        AVDAG_CELERY_BROKER_URL=redis_url,
        AVDAG_STATE_URL=f"s3://{s3.make_bucket('state')}/avdag",
        AVDAG_S3_ENDPOINT_URL=s3.endpoint_url,
        AVDAG_DB_URL=isolated_schema(postgres_url),
        PATH=f"{BIN}{os.pathsep}{env['PATH']}",  # dagster-celery starts `celery` from PATH
        PYTHONPATH=str(REPO),  # the workers import the job's module; their folders are elsewhere
        PYTHONUNBUFFERED="1",
    )
    # The workers' side of the executor config: the same broker and backend; steps' stdout and stderr left to
    # Dagster's compute logs (Celery would send them to its own log).
    worker_config = {"broker": redis_url, "backend": redis_url, "config_source": {"worker_redirect_stdouts": False}}
    config = tmp_path / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": worker_config}}))

    workers = [Worker("cpu", DEFAULT_QUEUE, env, tmp_path / "cpu-worker", config)]
    launcher = subprocess.Popen(
        [sys.executable, "-c", "from avdag_tests.support.celery_smoke import launch; launch()"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        with dg.DagsterInstance.from_config(dagster_env["DAGSTER_HOME"]) as instance:
            _wait_for(instance, 'Submitting celery task for step "on_gpu" to queue "gpu"', 150, workers, launcher)
            time.sleep(5)  # ample time for the idle CPU worker to take the task, were it on its queue
            run_id, events = _messages(instance)
            assert _pending(redis_url, "gpu") == 1, "the GPU step's task waits in the broker"
            started_on_gpu = [e for e in events if e.step_key == "on_gpu" and e.dagster_event_type == STEP_START]
            assert not started_on_gpu, "no worker listens on the gpu queue yet: the step must not have started"

            workers.append(Worker("gpu", "gpu", env, tmp_path / "gpu-worker", config))
            try:
                out, err = launcher.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                raise AssertionError("\n".join(worker.tail() for worker in workers)) from None
            assert launcher.returncode == 0, f"{err[-3000:]}\n" + "\n".join(worker.tail() for worker in workers)
            launched = json.loads(out.strip().splitlines()[-1])
            assert launched["success"] and launched["run_id"] == run_id

            ran = {step: _recorded_where(instance, step) for step in STEPS}
            _, events = _messages(instance)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)
        for worker in workers:
            worker.stop()

    assert {step: where["worker"] for step, where in ran.items()} == {
        "prepared": "cpu",
        "on_gpu": "gpu",
        "summarized": "cpu",
    }
    pids = {where["pid"] for where in ran.values()}
    assert launched["pid"] not in pids and os.getpid() not in pids, "every step ran in a worker, not the launcher"
    # dagster-celery's own record of who took each step, and where it sent it
    messages = [event.message or "" for event in events]
    for step, queue, worker in (("prepared", DEFAULT_QUEUE, "cpu"), ("on_gpu", "gpu", "gpu")):
        assert f'Submitting celery task for step "{step}" to queue "{queue}".' in messages
        took = [
            e for e in events if e.step_key == step and f"Executing steps {step} in celery worker" in (e.message or "")
        ]
        assert len(took) == 1
        hostname = took[0].dagster_event.engine_event_data.metadata["Celery worker"].value
        assert hostname.startswith(f"{worker}@")
    logs = b"\n".join(compute_logs(s3).values())
    assert all(f"{step} ran in".encode() in logs for step in STEPS), "each worker's step output is on S3"
    print(f"celery smoke test: {time.monotonic() - started:.0f}s")
