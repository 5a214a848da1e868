"""Launching cosmos-rl: streaming, loss parsing, failures (a replica crash that exits 0 included),
checkpoint install, and full runs through the stand-in executable (tiny model, CPU)."""

import json
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from avdag.core.training.cosmos_rl.config import CosmosRlSettings, write_cosmos_rl_toml
from avdag.core.training.cosmos_rl.launcher import (
    CosmosRlError,
    CosmosRlUnfinishedError,
    check_executables,
    install_export,
    launch_cosmos_rl,
    train_with_cosmos_rl,
)
from avdag.core.training.embedded_loop import SftExample
from avdag.resources.cosmos_trainer import CosmosRlTrainerResource
from avdag_tests.support.cosmos_rl_standin import CRASH_AFTER_STEP
from avdag_tests.support.sft_examples import synthetic_sft_examples

STANDIN = str(Path(__file__).resolve().parents[2] / "support" / "cosmos_rl_standin.py")


def fake_cosmos_rl(tmp_path: Path, body: str) -> list[str]:
    """A launcher command running `body` with `output_dir` and `ack` (a file path) defined."""
    script = tmp_path / "fake_cosmos_rl.py"
    script.write_text(
        "import sys, time, tomllib, pathlib\n"
        "config = tomllib.loads(pathlib.Path(sys.argv[sys.argv.index('--config') + 1]).read_text())\n"
        "output_dir = pathlib.Path(config['train']['output_dir'])\n"
        f"ack = pathlib.Path({str(tmp_path / 'ack')!r})\n" + textwrap.dedent(body)
    )
    return [sys.executable, str(script)]


@pytest.fixture
def job(tmp_path) -> tuple[Path, Path]:
    toml_path = tmp_path / "job" / "job.toml"
    write_cosmos_rl_toml({"train": {"output_dir": str(tmp_path / "job" / "outputs"), "timestamp": "run-1"}}, toml_path)
    return toml_path, tmp_path / "job" / "entry.py"


def test_lines_stream_as_they_arrive_and_losses_are_parsed(tmp_path, job):
    command = fake_cosmos_rl(
        tmp_path,
        """
        print("[cosmos] INFO - Step: 1/2, Loss: 1.50000, Grad norm: 0.10000, Iteration time: 1.00s", flush=True)
        deadline = time.time() + 30
        while not ack.exists():  # the launcher must hand the line over before this process ends
            if time.time() > deadline:
                sys.exit(3)
            time.sleep(0.05)
        print("[cosmos] INFO - Step: 2/2, Loss: 1.25e-1, Grad norm: 0.1", flush=True)
        export = output_dir / "safetensors" / "step_2"
        export.mkdir(parents=True)
        print(f"[cosmos] INFO - \\n\\nExported safetensors to {export}\\n\\n")
    """,
    )
    seen, steps = [], []

    def log(line: str) -> None:
        seen.append(line)
        if "Step: 1/2" in line:
            (tmp_path / "ack").touch()

    run = launch_cosmos_rl(
        command,
        *job,
        log=log,
        log_dir=tmp_path / "logs",
        require_redis=False,
        on_step=lambda step, total, loss: steps.append((step, total, loss)),
    )
    assert run.losses == [(1, 1.5), (2, 0.125)]
    assert steps == [(1, 2, 1.5), (2, 2, 0.125)]
    assert run.export_dir == tmp_path / "job" / "outputs" / "safetensors" / "step_2"
    assert any("Exported safetensors to" in line for line in seen)
    assert "Step: 2/2" in (tmp_path / "logs" / "cosmos-rl.log").read_text()


def test_without_an_export_line_the_highest_step_folder_is_taken(tmp_path, job):
    command = fake_cosmos_rl(
        tmp_path,
        """
        print("[cosmos] INFO - Step: 10/10, Loss: 0.50000, Grad norm: 0.1")
        for step in (2, 10, 9):
            (output_dir / "safetensors" / f"step_{step}").mkdir(parents=True)
    """,
    )
    run = launch_cosmos_rl(command, *job, log=lambda line: None, log_dir=tmp_path, require_redis=False)
    assert run.export_dir.name == "step_10"


def test_a_leftover_child_holding_the_output_does_not_block_the_launcher(tmp_path, job):
    command = fake_cosmos_rl(
        tmp_path,
        """
        import subprocess
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # inherits stdout, outlives us
        print("Step: 1/1, Loss: 0.5, Grad norm: 0.1")
        (output_dir / "safetensors" / "step_1").mkdir(parents=True)
    """,
    )
    start = time.monotonic()
    run = launch_cosmos_rl(command, *job, log=lambda line: None, log_dir=tmp_path, require_redis=False)
    assert run.export_dir.name == "step_1" and time.monotonic() - start < 60


def test_a_failed_run_raises_with_the_tail_of_its_log(tmp_path, job):
    command = fake_cosmos_rl(
        tmp_path,
        """
        for i in range(50):
            print(f"L{i:03d}")
        sys.exit(7)
    """,
    )
    with pytest.raises(CosmosRlError, match="exited with code 7") as failure:
        launch_cosmos_rl(command, *job, log=lambda line: None, log_dir=tmp_path, require_redis=False)
    assert "L049" in str(failure.value) and "L010" in str(failure.value) and "L009" not in str(failure.value)
    assert str(tmp_path / "cosmos-rl.log") in str(failure.value)


def test_a_run_without_export_raises(tmp_path, job):
    command = fake_cosmos_rl(tmp_path, "print('Step: 1/1, Loss: 0.5, Grad norm: 0.1')\nprint('training done')\n")
    with pytest.raises(CosmosRlError, match="no export was found") as failure:
        launch_cosmos_rl(command, *job, log=lambda line: None, log_dir=tmp_path, require_redis=False)
    assert "training done" in str(failure.value)


REPLICA_CRASH = """
log = "[cosmos] 2026-12-02 10:01:00,000 - cosmos - {} - {}".format
for step in (1, 2, 3):
    print(log("INFO", f"Step: {step}/4, Loss: 1.00000, Grad norm: 0.10000, Iteration time: 9.00s"))
    if step == 2:
        (output_dir / "safetensors" / "step_2").mkdir(parents=True)
        print(log("INFO", f"\\n\\nExported safetensors to {output_dir}/safetensors/step_2\\n\\n"))
for rank in range(4):  # every rank fails alike, under torchrun's prefix
    print(f"[rank{rank}]: Traceback (most recent call last):", file=sys.stderr)
    print(f'[rank{rank}]:   File "/opt/cosmos_rl/policy/worker/sft_worker.py", line 1013', file=sys.stderr)
    print(f"[rank{rank}]: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled", file=sys.stderr)
print(log("ERROR", "Process 4242 failed with return code 1"))
print(log("INFO", "Process 4241 completed (rc=0)"))
"""


def test_a_replica_crash_that_exits_0_is_refused_naming_step_export_and_errors(tmp_path, job):
    command = fake_cosmos_rl(tmp_path, REPLICA_CRASH)
    with pytest.raises(CosmosRlUnfinishedError) as failure:
        launch_cosmos_rl(command, *job, log=lambda line: None, log_dir=tmp_path, require_redis=False)
    message, export = str(failure.value), tmp_path / "job" / "outputs" / "safetensors" / "step_2"
    assert "Last step reached: 3/4" in message
    assert f"refused export {export} (step 2)" in message
    assert "[rank0]: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970" in message
    assert "Process 4242 failed with return code 1" in message
    assert message.count("NCCL error") == 1 and "Process 4241 completed" not in message
    assert str(tmp_path / "cosmos-rl.log") in message and f"job folder {tmp_path / 'job'} is kept" in message
    assert (failure.value.last_step, failure.value.total_steps, failure.value.refused_export) == (3, 4, export)
    assert export.is_dir()  # left for cosmos-rl's resume, with the rest of the job folder


def test_a_finished_run_whose_export_is_an_earlier_step_is_refused(tmp_path, job):
    command = fake_cosmos_rl(
        tmp_path,
        """
        (output_dir / "safetensors" / "step_2").mkdir(parents=True)  # an earlier attempt's save
        print("Step: 4/4, Loss: 0.5, Grad norm: 0.1")
    """,
    )
    with pytest.raises(CosmosRlUnfinishedError, match="the export found is step 2, not the final step 4") as failure:
        launch_cosmos_rl(command, *job, log=lambda line: None, log_dir=tmp_path, require_redis=False)
    assert "No error lines in the log; last 1 lines" in str(failure.value)


def test_a_run_that_never_logs_a_step_is_refused(tmp_path, job):
    command = fake_cosmos_rl(tmp_path, "print('[cosmos] 2026-12-02 10:00:00,000 - cosmos - ERROR - No GPUs available')")
    with pytest.raises(CosmosRlUnfinishedError, match="Last step reached: none") as failure:
        launch_cosmos_rl(command, *job, log=lambda line: None, log_dir=tmp_path, require_redis=False)
    assert "no export to refuse" in str(failure.value) and "No GPUs available" in str(failure.value)


def test_missing_redis_server_or_launcher_is_named_before_anything_starts(tmp_path, job, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(CosmosRlError, match="redis-server"):
        launch_cosmos_rl([sys.executable, "-c", "pass"], *job, log=print, log_dir=tmp_path / "logs")
    assert not (tmp_path / "logs").exists()
    check_executables([sys.executable], require_redis=False)
    with pytest.raises(CosmosRlError, match="cosmos-rl"):
        check_executables(["cosmos-rl"], require_redis=False)


def test_a_config_without_timestamp_is_refused(tmp_path):
    toml_path = tmp_path / "job.toml"
    write_cosmos_rl_toml({"train": {"output_dir": str(tmp_path), "timestamp": ""}}, toml_path)
    with pytest.raises(ValueError, match="timestamp"):
        launch_cosmos_rl(
            [sys.executable], toml_path, tmp_path / "e.py", log=print, log_dir=tmp_path, require_redis=False
        )


class _Processor:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def save_pretrained(self, path):
        if self.fail:
            raise OSError("disk full")
        (Path(path) / "preprocessor_config.json").write_text("{}")


def test_install_is_all_or_nothing_and_clears_a_killed_installs_staging(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.safetensors").write_text("weights")
    output = tmp_path / "checkpoints" / "sft-1"
    stale = tmp_path / "checkpoints" / ".sft-1.staging-killed"
    stale.mkdir(parents=True)
    with pytest.raises(OSError, match="disk full"):
        install_export(export, output, _Processor(fail=True), {"losses": []})
    assert not output.exists()  # no half-written checkpoint for the asset to mistake as trained
    assert list((tmp_path / "checkpoints").iterdir()) == []  # stale and failed staging both gone
    install_export(export, output, _Processor(), {"losses": [[1, 0.5]]})
    assert sorted(p.name for p in output.iterdir()) == [
        "avdag_training.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["sft-1"]


# --- whole runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[SftExample]:
    return synthetic_sft_examples(tmp_path_factory.mktemp("clips"), 2, seed=1)


SMALL_JOB = dict(
    epochs=2,
    train_batch_per_replica=1,
    mini_batch=1,
    dp_shard_size=1,
    learning_rate=3e-3,
    warmup_steps=1,
    dataloader_num_workers=1,
)


def test_too_few_examples_for_one_batch_fail_before_launch(examples, tmp_path):
    with pytest.raises(ValueError, match="fill no batch"):  # recipe: 8 ranks x 16 examples per step
        train_with_cosmos_rl(
            "unused",
            examples,
            tmp_path / "out",
            CosmosRlSettings(),
            command=[sys.executable],
            log=print,
            require_redis=False,
        )


def test_overlong_examples_fail_before_launch_naming_each_clip(tiny_model_path, examples, tmp_path):
    settings = CosmosRlSettings(**{**SMALL_JOB, "model_max_length": 100})
    with pytest.raises(ValueError, match="exceed model_max_length=100") as failure:
        train_with_cosmos_rl(
            tiny_model_path,
            examples,
            tmp_path / "out",
            settings,
            command=[sys.executable],
            log=print,
            work_dir=tmp_path / "jobs",
            require_redis=False,
        )
    assert all(f"{e.clip_id} (" in str(failure.value) for e in examples)
    assert not (tmp_path / "jobs").exists()


def test_trainer_resource_runs_cosmos_rl_and_installs_a_loadable_checkpoint(tiny_model_path, examples, tmp_path):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    trainer = CosmosRlTrainerResource(launcher=[sys.executable, STANDIN], require_redis=False, **SMALL_JOB)
    progress = []
    output = tmp_path / "checkpoints" / "sft-abc"
    result = trainer.train(tiny_model_path, examples, output, progress.append)

    assert [step for step, _ in result.losses] == [1, 2, 3, 4]  # 2 examples x 2 epochs, batch 1
    assert [(p["step"], p["steps"]) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    record = json.loads((output / "avdag_training.json").read_text())
    assert record["examples"] == [e.clip_id for e in examples] and record["trainer"] == "cosmos-rl"
    assert [tuple(pair) for pair in record["losses"]] == result.losses
    assert record["settings"] == trainer.settings().as_dict()

    job = tmp_path / "checkpoints" / ".cosmos-rl-jobs" / "sft-abc"
    config = tomllib.loads((job / "job.toml").read_text())
    assert config["train"]["output_dir"] == str(job / "outputs")
    assert record["cosmos_rl_export"] == str(job / "outputs" / "safetensors" / "step_4")  # no timestamp folder
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".sft-abc")] == []

    tuned = Qwen2_5_VLForConditionalGeneration.from_pretrained(output)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path)
    AutoProcessor.from_pretrained(output)
    assert not torch.equal(tuned.lm_head.weight, base.lm_head.weight)  # the dataset really fed training


def test_a_replica_crash_in_the_standin_is_refused_and_the_next_attempt_resumes_in_the_same_job(
    tiny_model_path, examples, tmp_path, monkeypatch
):
    trainer = CosmosRlTrainerResource(launcher=[sys.executable, STANDIN], require_redis=False, save_freq=2, **SMALL_JOB)
    output = tmp_path / "checkpoints" / "sft-abc"
    job = tmp_path / "checkpoints" / ".cosmos-rl-jobs" / "sft-abc"
    monkeypatch.setenv(CRASH_AFTER_STEP, "3")  # of 4; saves at step 2
    with pytest.raises(CosmosRlUnfinishedError) as failure:
        trainer.train(tiny_model_path, examples, output, lambda p: None)
    message = str(failure.value)
    assert "Last step reached: 3/4" in message
    assert f"refused export {job / 'outputs' / 'safetensors' / 'step_2'} (step 2)" in message
    assert "torch.OutOfMemoryError: CUDA out of memory" in message and "failed with return code 1" in message
    assert not output.exists()  # nothing installed ...
    assert (job / "outputs" / "safetensors" / "step_2").is_dir()  # ... and the job folder kept
    assert tomllib.loads((job / "job.toml").read_text())["train"]["resume"] is True

    monkeypatch.delenv(CRASH_AFTER_STEP)
    result = trainer.train(tiny_model_path, examples, output, lambda p: None)
    assert [step for step, _ in result.losses] == [1, 2, 3, 4]
    config = tomllib.loads((job / "job.toml").read_text())
    assert config["train"]["resume"] is True and config["train"]["timestamp"] == "sft-abc"  # same folder: resumable
    assert config["train"]["output_dir"] == str(job / "outputs")
    record = json.loads((output / "avdag_training.json").read_text())
    assert record["cosmos_rl_export"] == str(job / "outputs" / "safetensors" / "step_4")
