"""A stand-in for the `cosmos-rl` executable, for machines without GPUs (cosmos-rl needs GPUs,
NCCL and redis; it has no CPU mode).

It keeps what avdag relies on: the command line (`--config job.toml entry.py`), cosmos-rl's
output-folder rule (a timestamp folder is appended unless `train.timestamp` is set), the dataset
built by the entry script's `get_dataset(config)` (the script is imported, not run as __main__,
and `config.custom` is a dict as in cosmos-rl's Config), training on exactly those items (with
avdag's embedded trainer), cosmos-rl's `Step:` and `Exported safetensors to` log lines, and the
export layout `<output_dir>/safetensors/step_N/`. What it does not model: parallelism, redis,
the controller, checkpoint resume and truncation to model_max_length.

With `AVDAG_COSMOS_STANDIN_CRASH_AFTER_STEP=k` (k < N) it plays cosmos-rl's quiet failure: it
trains k of the N steps (logged `Step: i/N`), exports at every `save_freq` step up to k (all
holding the step-k weights: avdag never loads a refused export), prints a rank's traceback,
torchrun's failure summary and the launcher's `Process … failed with return code 1`, and exits 0,
as cosmos-rl does when a training replica (not the controller) dies.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import sys
import time
import tomllib
from datetime import datetime
from types import SimpleNamespace

from avdag.core.training.embedded_loop import SftExample, SftSettings, train_sft

CRASH_AFTER_STEP = "AVDAG_COSMOS_STANDIN_CRASH_AFTER_STEP"


def cosmos_config(data: dict):
    """Sections as attributes, like cosmos-rl's Config; `[custom]` stays a dict as it does there."""
    return SimpleNamespace(**{k: _sections(v) if isinstance(v, dict) and k != "custom" else v for k, v in data.items()})


def _sections(value):
    return SimpleNamespace(**{k: _sections(v) for k, v in value.items()}) if isinstance(value, dict) else value


def load_entry_script(path: str):
    spec = importlib.util.spec_from_file_location("cosmos_rl_user_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(message: str, level: str = "INFO") -> None:
    print(f"[cosmos] {datetime.now():%Y-%m-%d %H:%M:%S,%f} - cosmos - {level} - {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("script")
    args = parser.parse_args()
    with open(args.config, "rb") as f:
        data = tomllib.load(f)
    config = cosmos_config(data)
    train = config.train
    output_dir = (
        train.output_dir if train.timestamp else os.path.join(train.output_dir, datetime.now().strftime("%Y%m%d%H%M%S"))
    )

    dataset = load_entry_script(args.script).get_dataset(config)
    items = [dataset[i] for i in range(len(dataset))]
    examples = [SftExample(f"item-{i}", _video(item), item) for i, item in enumerate(items)]
    parallel = config.policy.parallelism
    per_rank = math.ceil(len(items) / (parallel.dp_shard_size * parallel.dp_replicate_size))
    steps = per_rank // train.train_batch_per_replica * train.epoch
    _log(f"Total training steps: {steps}")
    settings = SftSettings(
        steps=steps,
        batch_size=train.train_batch_per_replica,
        learning_rate=train.optm_lr,
        warmup_steps=train.optm_warmup_steps,
        weight_decay=train.optm_weight_decay,
        grad_clip=train.optm_grad_norm_clip,
        fps=config.custom["fps"],
        max_pixels=config.custom["max_pixels"],
    )
    last = [time.perf_counter()]

    def report(p: dict) -> None:
        now = time.perf_counter()
        _log(
            f"Step: {p['step']}/{p['steps']}, Loss: {p['loss']:.5f}, Grad norm: nan, "
            f"Iteration time: {now - last[0]:.2f}s"
        )
        last[0] = now

    crash_after = os.environ.get(CRASH_AFTER_STEP)
    if crash_after is not None:
        _train_and_crash(config, examples, settings, output_dir, int(crash_after), report)
        return
    export = os.path.join(output_dir, "safetensors", f"step_{steps}")
    train_sft(config.policy.model_name_or_path, examples, export, settings, device="cpu", progress=report)
    _log(f"\n\nExported safetensors to {export}\n\n")


def _train_and_crash(config, examples, settings: SftSettings, output_dir: str, crash_after: int, report) -> None:
    """Train `crash_after` of the steps, export at each save step up to there, then fail as a
    replica does under cosmos-rl: error lines in the log, exit status 0."""
    if not 0 <= crash_after < settings.steps:
        raise SystemExit(f"{CRASH_AFTER_STEP}={crash_after}: must be in [0, {settings.steps})")
    save_freq = config.train.ckpt.save_freq
    saves = [step for step in range(save_freq, crash_after + 1, save_freq)]
    if crash_after:
        weights = os.path.join(output_dir, ".standin-weights")

        def report_of_all(p: dict) -> None:
            report({**p, "steps": settings.steps})  # the run's total, not the shortened one trained

        partial = SftSettings(**{**settings.as_dict(), "steps": crash_after})
        train_sft(config.policy.model_name_or_path, examples, weights, partial, device="cpu", progress=report_of_all)
        for step in saves:
            export = os.path.join(output_dir, "safetensors", f"step_{step}")
            shutil.copytree(weights, export)
            _log(f"\n\nExported safetensors to {export}\n\n")
        shutil.rmtree(weights)
    for rank in (0, 1):  # every rank prints the same traceback
        print(
            f"[rank{rank}]: Traceback (most recent call last):\n"
            f'[rank{rank}]:   File "/opt/cosmos_rl/policy/worker/sft_worker.py", line 1013, in main_loop\n'
            f"[rank{rank}]:     report_data = self.trainer.step_training(\n"
            f"[rank{rank}]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
            f"(stand-in crash after step {crash_after})",
            file=sys.stderr,
            flush=True,
        )
    print(
        "E1202 10:00:00.000000 4243 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) "
        "local_rank: 0 (pid: 4244) of binary: /usr/bin/python\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "cosmos_rl.policy.train FAILED\n"
        "------------------------------------------------------------",
        file=sys.stderr,
        flush=True,
    )
    _log("Process 4242 failed with return code 1", "ERROR")
    _log("Process 4241 completed (rc=0)")


def _video(conversation: list[dict]) -> str:
    return next(
        item["video"]
        for m in conversation
        if isinstance(m["content"], list)
        for item in m["content"]
        if item["type"] == "video"
    )


if __name__ == "__main__":
    main()
