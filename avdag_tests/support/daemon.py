"""avdag as a platform on this machine, for tests and benchmarks: a throwaway $AVDAG_HOME with an instance
config, the real `dagster-daemon` on it (sensors, run queue, run launcher: every run is a fresh process
started by the code server), the `dagster` CLI against it, and readers of what the runs recorded.

Nothing here calls into avdag's jobs in-process: runs start the way they start in production, and the
test process only reads the instance (`DagsterInstance.from_ref`) and the files under $AVDAG_HOME.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from avdag.core.common.package_files import instance_config_file
from avdag.core.ingest.landing import READY_MARKER

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = REPO / "workspace.yaml"
BIN = Path(sys.executable).parent
STAGE_TAG = "avdag/stage"
ACTIVE = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
MODEL_DIR_NAME = "tiny-qwen2.5-vl"


def shipped_instance_config() -> str:
    return instance_config_file().read_text(encoding="utf-8")


def _queue_sections(config: dict) -> list[dict]:
    """Where run queue limits live: `run_queue`, or `concurrency: runs:` (Dagster's newer spelling)."""
    return [section for section in (config.get("run_queue"), (config.get("concurrency") or {}).get("runs")) if section]


def stage_limits(instance_config: str) -> dict[str, int]:
    """`avdag/stage` value -> run limit, as an instance config sets them."""
    config = yaml.safe_load(instance_config) or {}
    return {
        limit["value"]: int(limit["limit"])
        for section in _queue_sections(config)
        for limit in section.get("tag_concurrency_limits") or []
        if limit.get("key") == STAGE_TAG
    }


def instance_config_without_limit(stage: str) -> str:
    """The shipped instance config with the run queue's limit for one `avdag/stage` value removed."""
    config = yaml.safe_load(shipped_instance_config())
    removed = 0
    for section in _queue_sections(config):
        limits = section.get("tag_concurrency_limits") or []
        kept = [limit for limit in limits if not (limit.get("key") == STAGE_TAG and limit.get("value") == stage)]
        removed += len(limits) - len(kept)
        section["tag_concurrency_limits"] = kept
    if not removed:
        raise ValueError(f"the shipped instance config has no {STAGE_TAG}={stage} limit to remove")
    return yaml.safe_dump(config, sort_keys=False)


def platform_env(home: Path, **avdag_vars: str | int) -> dict[str, str]:
    """The environment of every platform process: this machine's, minus avdag/OpenAI/Dagster settings, plus ours.

    `avdag_vars` are `AVDAG_*` names without the prefix (sft_steps=6 -> AVDAG_SFT_STEPS=6).
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AVDAG_", "OPENAI_", "DAGSTER_"))}
    env.update(
        AVDAG_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"AVDAG_{name.upper()}": str(value) for name, value in avdag_vars.items()})
    return env


def prepare_home(home: Path, model_dir: Path, instance_config: str) -> Path:
    """$AVDAG_HOME laid out as `avdag demo` leaves it: dagster/dagster.yaml, the tiny model, a landing folder."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(instance_config, encoding="utf-8")
    target = home / "models" / MODEL_DIR_NAME
    if not (Path(model_dir) / "_COMPLETE").is_file():
        raise FileNotFoundError(f"{model_dir} is not a complete model folder (no _COMPLETE marker)")
    shutil.copytree(model_dir, target)
    (home / "landing").mkdir(exist_ok=True)
    return home


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "<no log>"


def _stop_group(proc: subprocess.Popen, term_wait_s: float = 20) -> None:
    """SIGTERM, then SIGKILL, the process group `proc` leads (it was started in a session of its own)."""
    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing else of its group lingers
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class Platform:
    """One $AVDAG_HOME with its daemon. Use as a context manager: the daemon's whole process group
    (daemon, its code server and every run process the code server spawned) is stopped on exit."""

    def __init__(self, home: Path, env: Mapping[str, str]):
        self.home = Path(home)
        self.env = dict(env)
        self.dagster_home = self.home / "dagster"
        self.landing = Path(self.env.get("AVDAG_LANDING_URL") or self.home / "landing")
        self.daemon_log = self.home / "daemon.log"
        self._daemon: subprocess.Popen | None = None
        self._instance: dg.DagsterInstance | None = None

    # -- processes ------------------------------------------------------------------------------

    def start_daemon(self, live_timeout_s: float = 180) -> float:
        """`dagster-daemon run -w workspace.yaml`; returns once it heartbeats (seconds it took)."""
        started = time.monotonic()
        # Create the fresh instance's SQLite storages (runs, schedules, event index) here, before the daemon,
        # its code server and the CLI open them at once: concurrent first opens race on alembic's schema
        # stamp (seen once: `check_alembic_revision` -> CommandError in a CLI process).
        self.instance.get_run_records(limit=1)
        self.instance.all_instigator_state()
        self.instance.get_daemon_heartbeats()
        self.instance.fetch_materializations(dg.AssetKey("avdag_storage_init"), limit=1)
        with open(self.daemon_log, "ab") as log:
            self._daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while True:
            if self._daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited with {self._daemon.returncode}:\n{_tail(self.daemon_log)}")
            check = self.cli_daemon("liveness-check", check=False, timeout_s=120)
            if check.returncode == 0 and "Daemon live" in check.stdout:
                return time.monotonic() - started
            if time.monotonic() - started > live_timeout_s:
                raise TimeoutError(
                    f"dagster-daemon not live after {live_timeout_s:.0f}s: {check.stdout}{check.stderr}\n"
                    f"{_tail(self.daemon_log)}"
                )
            time.sleep(2)

    def stop(self) -> None:
        if self._daemon is not None:
            _stop_group(self._daemon)
            self._daemon = None
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, argv: list[str], check: bool, timeout_s: float) -> subprocess.CompletedProcess:
        """A CLI call in a session of its own (its code server with it), stopped if it outlives `timeout_s`."""
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc, term_wait_s=5)
            out, err = proc.communicate()
            raise TimeoutError(f"{' '.join(argv)} still running after {timeout_s:.0f}s:\n{out}\n{err}") from None
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{out}\n{err}")
        return result

    def cli(self, *args: str, check: bool = True, timeout_s: float = 300) -> subprocess.CompletedProcess:
        """`dagster <args> -w workspace.yaml` with the platform's environment."""
        return self._run([sys.executable, "-m", "dagster", *args, "-w", str(WORKSPACE)], check, timeout_s)

    def cli_daemon(self, *args: str, check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return self._run([str(BIN / "dagster-daemon"), *args], check, timeout_s)

    def start_sensor(self, name: str) -> None:
        self.cli("sensor", "start", name)

    def launch(self, job: str, run_id: str, tags: Mapping[str, str] | None = None) -> None:
        """Submit a run as a user would from the CLI: it goes through the instance's run queue."""
        args = ["job", "launch", "-j", job, "--run-id", run_id]
        if tags:
            import json

            args += ["--tags", json.dumps(dict(tags))]
        self.cli(*args)

    def daemon_alive(self) -> bool:
        return self._daemon is not None and self._daemon.poll() is None

    def daemon_log_tail(self, chars: int = 4000) -> str:
        return _tail(self.daemon_log, chars)

    # -- the instance, read-only from here ------------------------------------------------------

    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            from dagster._core.instance.ref import InstanceRef

            self._instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.dagster_home)))
        return self._instance

    def runs(self) -> list[RunRow]:
        records = self.instance.get_run_records(limit=10_000)
        return sorted((RunRow.of(r) for r in records), key=lambda r: r.created)

    def materializations(self, asset: str) -> list[Materialized]:
        """Every materialization of `asset`, oldest first."""
        result = self.instance.fetch_materializations(dg.AssetKey(asset), limit=10_000, ascending=True)
        return [Materialized.of(r) for r in result.records]

    def check_evaluations(self, run_id: str) -> dict[str, bool]:
        """`<asset>:<check>` -> passed, for every asset check a run evaluated."""
        found = {}
        for entry in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data
            found[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = bool(evaluation.passed)
        return found

    def run_failure(self, run_id: str) -> str:
        """What a failed run's step failures and run failure said."""
        lines = []
        for entry in self.instance.all_logs(run_id):
            event = entry.dagster_event
            if event and event.event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
                data = event.event_specific_data
                error = getattr(data, "error", None)
                lines.append(f"{event.event_type.value} {event.step_key or ''}: {entry.message}")
                if error is not None:
                    lines.append(error.to_string()[-3000:])
        return "\n".join(lines) or "<no failure events>"


@dataclass(frozen=True)
class RunRow:
    run_id: str
    job: str
    status: str
    tags: dict[str, str]
    created: float
    start: float | None
    end: float | None

    @classmethod
    def of(cls, record) -> RunRow:
        run = record.dagster_run
        return cls(
            run.run_id,
            run.job_name,
            run.status.value,
            dict(run.tags),
            record.create_timestamp.timestamp(),
            record.start_time,
            record.end_time,
        )

    @property
    def active(self) -> bool:
        return self.status in {s.value for s in ACTIVE}

    @property
    def partition(self) -> str | None:
        return self.tags.get("dagster/partition")

    def label(self) -> str:
        return f"{self.job}{f'[{self.partition}]' if self.partition else ''} {self.run_id[:8]}"


@dataclass(frozen=True)
class Materialized:
    storage_id: int
    run_id: str
    partition: str | None
    timestamp: float
    metadata: dict[str, Any]

    @classmethod
    def of(cls, record) -> Materialized:
        materialization = record.asset_materialization
        metadata = {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}
        return cls(record.storage_id, record.run_id, record.partition_key, record.timestamp, metadata)


def overlaps(a: RunRow, b: RunRow) -> bool:
    """Whether two finished runs were executing at the same time (their [start, end] intervals intersect)."""
    if None in (a.start, a.end, b.start, b.end):
        raise ValueError(f"{a.label()} or {b.label()} has no start/end time")
    return a.start < b.end and b.start < a.end


def mark_ready(landing: Path, batches: Iterable[str]) -> float:
    """Write the batches' `_READY` markers back to back; returns the wall-clock time of the first."""
    stamp = time.time()
    for batch in batches:
        (landing / batch / READY_MARKER).touch()
    return stamp
