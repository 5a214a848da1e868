"""Run an SFT job through cosmos-rl and install its export as an avdag checkpoint.

avdag writes the job (conversations JSONL, TOML, entry script) into a job folder, starts
`cosmos-rl --config job.toml entry.py`, streams its output line by line (losses and
progress come from cosmos-rl's `Step: i/N, Loss: x` lines), and moves the exported safetensors into
`output_dir` in one rename, so a crash never leaves a half-written checkpoint behind.

Only a finished run's export is installed: cosmos-rl exits 0 when a training replica crashes, after
intermediate `save_freq` exports, so the last step line must reach its total and the export must
be that step's (see `run_log`). A refused run leaves its job folder for `train.resume` to continue.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from avdag.core.common.atomic import atomic_directory
from avdag.core.training.cosmos_rl.config import CosmosRlSettings, build_cosmos_rl_config, write_cosmos_rl_toml
from avdag.core.training.cosmos_rl.dataset import overlong_examples, write_conversations_jsonl
from avdag.core.training.cosmos_rl.run_log import RunLog, export_step, unfinished_reason
from avdag.core.training.embedded_loop import Progress, SftExample, SftResult

ENTRY_SCRIPT = Path(__file__).resolve().parent / "entry.py"
LOG_TAIL_LINES = 40

Log = Callable[[str], None]
OnStep = Callable[[int, int, float], None]


class CosmosRlError(RuntimeError):
    """cosmos-rl could not run, failed, or left no export."""


class CosmosRlUnfinishedError(CosmosRlError):
    """cosmos-rl exited 0 but training did not reach its final step (a replica crashed, or it was
    stopped): the export it left, if any, is an intermediate one and is not installed."""

    def __init__(
        self,
        message: str,
        *,
        last_step: int | None,
        total_steps: int | None,
        refused_export: Path | None,
        error_lines: list[str],
    ):
        super().__init__(message)
        self.last_step, self.total_steps = last_step, total_steps
        self.refused_export, self.error_lines = refused_export, error_lines


@dataclass(frozen=True)
class CosmosRlRun:
    losses: list[tuple[int, float]]
    export_dir: Path
    seconds: float
    log_path: Path


def check_executables(command: list[str], *, require_redis: bool = True) -> None:
    """Fail before any work if the launcher (or the redis-server cosmos-rl's controller starts) is missing."""
    missing = [
        name for name in [command[0]] + (["redis-server"] if require_redis else []) if shutil.which(name) is None
    ]
    if missing:
        raise CosmosRlError(
            f"not found on PATH: {', '.join(missing)}. cosmos-rl runs on GPU nodes with the 'cosmos' extra "
            "installed (pip install 'avdag[cosmos]') and redis-server (e.g. apt-get install redis-server)."
        )


def launch_cosmos_rl(
    command: list[str],
    toml_path: str | Path,
    script_path: str | Path,
    *,
    log: Log,
    log_dir: str | Path,
    on_step: OnStep | None = None,
    require_redis: bool = True,
) -> CosmosRlRun:
    """Run `command --config toml_path script_path`, streaming every line to `log` as it arrives.

    The output is also appended to `<log_dir>/cosmos-rl.log`. cosmos-rl's own `--log-dir` is not
    passed: it would send the step lines to files instead of stdout.
    """
    check_executables(command, require_redis=require_redis)
    config = tomllib.loads(Path(toml_path).read_text(encoding="utf-8"))
    if not config["train"].get("timestamp"):
        raise ValueError(
            f"{toml_path}: train.timestamp must be set, or cosmos-rl exports under a new timestamped folder"
        )
    output_dir = Path(config["train"]["output_dir"])
    log_path = Path(log_dir) / "cosmos-rl.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [*command, "--config", str(toml_path), str(script_path)]
    run = RunLog()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            cwd=Path(toml_path).parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        threading.Thread(target=_end_stragglers_after_exit, args=(process,), daemon=True).start()
        try:
            for raw in process.stdout:
                line = raw.rstrip("\n")
                log_file.write(raw)
                log_file.flush()
                tail.append(line)
                log(line)
                if (step := run.feed(line)) and on_step:
                    on_step(*step)
            returncode = process.wait()
        except BaseException:
            _stop(process)
            raise
    if returncode != 0:
        raise CosmosRlError(f"cosmos-rl exited with code {returncode}{_tail_message(tail, log_path)}")
    # A relative export path is relative to cosmos-rl's working folder.
    export_dir = Path(toml_path).parent / run.exported if run.exported else _latest_export(output_dir)
    if reason := unfinished_reason(run, export_dir):
        raise _unfinished_error(reason, run, export_dir, tail, log_path, job_dir=Path(toml_path).parent)
    if export_dir is None or not export_dir.is_dir():
        raise CosmosRlError(
            f"cosmos-rl finished but no export was found (no 'Exported safetensors to' line, nothing in "
            f"{output_dir}/safetensors/step_N){_tail_message(tail, log_path)}"
        )
    return CosmosRlRun(run.losses, export_dir, time.perf_counter() - start, log_path)


def _unfinished_error(
    reason: str, run: RunLog, export_dir: Path | None, tail: deque[str], log_path: Path, *, job_dir: Path
) -> CosmosRlUnfinishedError:
    """The refusal, naming the last step, the export refused and the replica's error lines."""
    if export_dir is None:
        refused = "no export to refuse"
    else:
        step = export_step(export_dir)
        refused = f"refused export {export_dir}" + (f" (step {step})" if step is not None else "")
    errors = run.errors.lines()
    if errors:
        shown = f"Error lines from the log (full log: {log_path}):\n" + "\n".join(errors)
    else:
        shown = "No error lines in the log" + _tail_message(tail, log_path)
    message = (
        f"cosmos-rl exited 0 but {reason}. Last step reached: {run.last_step_text()}; {refused}. "
        "cosmos-rl exits 0 when a training replica crashes, so its intermediate exports are not "
        f"installed. The job folder {job_dir} is kept: the next attempt resumes from cosmos-rl's last "
        f"checkpoint (train.resume = true). {shown}"
    )
    return CosmosRlUnfinishedError(
        message,
        last_step=run.last_step,
        total_steps=run.total_steps,
        refused_export=export_dir,
        error_lines=errors,
    )


def _stop(process: subprocess.Popen) -> None:
    """Stop cosmos-rl and everything it started (controller, redis, torchrun ranks)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _end_stragglers_after_exit(process: subprocess.Popen) -> None:
    """Once cosmos-rl exits, kill what it left in its process group: a leftover rank holding the
    output pipe would keep the log stream open, and this step waiting, forever."""
    process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _tail_message(tail: deque[str], log_path: Path) -> str:
    return f"; last {len(tail)} lines (full log: {log_path}):\n" + "\n".join(tail)


def _latest_export(output_dir: Path) -> Path | None:
    steps = [p for p in (output_dir / "safetensors").glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def train_with_cosmos_rl(
    base_model: str,
    examples: list[SftExample],
    output_dir: str | Path,
    settings: CosmosRlSettings,
    *,
    command: list[str],
    progress: Progress | None = None,
    log: Log,
    work_dir: str | Path | None = None,
    require_redis: bool = True,
) -> SftResult:
    """Fine-tune through cosmos-rl; `output_dir` ends up a from_pretrained-loadable checkpoint.

    The job folder (`work_dir/<output_dir name>`, default a hidden sibling of output_dir) keeps the
    same path across re-runs, so cosmos-rl's `resume = true` continues a crashed run from its
    checkpoints.
    """
    output_dir = Path(output_dir)
    check_executables(command, require_redis=require_redis)
    processor = _processor_if_examples_fit(base_model, examples, settings)
    job_dir = Path(work_dir or output_dir.parent / ".cosmos-rl-jobs").absolute() / output_dir.name
    toml_path, script_path = _write_job(job_dir, base_model, examples, settings, run_id=output_dir.name)
    log(
        f"cosmos-rl job {job_dir}: {len(examples)} examples, {settings.total_steps(len(examples))} steps, "
        f"{settings.gpus_per_replica} GPUs per replica"
    )
    run = launch_cosmos_rl(
        command,
        toml_path,
        script_path,
        log=log,
        log_dir=job_dir,
        on_step=_progress_reporter(progress),
        require_redis=require_redis,
    )
    record = {
        "trainer": "cosmos-rl",
        "settings": settings.as_dict(),
        "losses": [list(pair) for pair in run.losses],
        "base_model": base_model,
        "examples": [e.clip_id for e in examples],
        "seconds": run.seconds,
        "cosmos_rl_export": str(run.export_dir),
    }
    install_export(run.export_dir, output_dir, processor, record)
    return SftResult(output_dir, run.losses, run.seconds, len(examples))


def _processor_if_examples_fit(base_model: str, examples: list[SftExample], settings: CosmosRlSettings):
    """The base model's processor, once the examples fill at least one batch and each fits the token limit.

    Both failures would otherwise surface only on the GPU nodes: no steps (and no export), or a
    crash in cosmos-rl's packer.
    """
    if not examples:
        raise ValueError("no training examples: the train split is empty")
    if settings.total_steps(len(examples)) == 0:
        ranks = settings.dp_shard_size * settings.dp_replicate_size
        raise ValueError(
            f"{len(examples)} examples fill no batch: each of {ranks} data-parallel ranks needs "
            f"train_batch_per_replica={settings.train_batch_per_replica} examples per step "
            f"(at least {ranks * settings.train_batch_per_replica} examples, or lower those settings)"
        )
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(base_model)
    over = overlong_examples(examples, processor, settings)
    if over:
        listed = ", ".join(f"{clip} ({tokens} tokens)" for clip, tokens in over)
        raise ValueError(
            f"{len(over)} examples exceed model_max_length={settings.model_max_length}: {listed}. "
            "Raise model_max_length, or lower fps/max_pixels."
        )
    return processor


def _progress_reporter(progress: Progress | None) -> OnStep | None:
    """Step lines -> the embedded trainer's progress dicts. The ETA uses the pace since the first
    step seen, so model loading and a resumed run's earlier steps do not distort it."""
    if progress is None:
        return None
    start = time.perf_counter()
    first: list[tuple[int, float]] = []

    def on_step(step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if not first:
            first.append((step, now))
        first_step, first_time = first[0]
        pace = (now - first_time) / (step - first_step) if step > first_step else (now - start) / step
        progress({"step": step, "steps": total, "loss": loss, "elapsed_s": now - start, "eta_s": pace * (total - step)})

    return on_step


def _write_job(
    job_dir: Path, base_model: str, examples: list[SftExample], settings: CosmosRlSettings, *, run_id: str
) -> tuple[Path, Path]:
    """conversations.jsonl + job.toml + a copy of the entry script: the job re-runs by hand from here."""
    jsonl, toml_path, script = job_dir / "conversations.jsonl", job_dir / "job.toml", job_dir / ENTRY_SCRIPT.name
    write_conversations_jsonl(examples, jsonl)
    config = build_cosmos_rl_config(
        settings, model=base_model, dataset_path=jsonl, output_dir=job_dir / "outputs", run_id=run_id
    )
    write_cosmos_rl_toml(config, toml_path)
    shutil.copyfile(ENTRY_SCRIPT, script)
    return toml_path, script


def install_export(export_dir: Path, output_dir: Path, processor, record: dict) -> None:
    """Copy the export, the base processor and avdag_training.json into output_dir in one rename.

    Staging folders left by a killed earlier install of the same output_dir are removed first.
    """
    with atomic_directory(output_dir) as staging:
        shutil.copytree(export_dir, staging, dirs_exist_ok=True)
        processor.save_pretrained(staging)
        (staging / "avdag_training.json").write_text(json.dumps(record, indent=2))
