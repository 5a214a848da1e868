"""Benchmark: what the platform costs around the model, for one clip batch run started as production starts it.

    python -m avdag_tests.bench.bench_platform                 # 6-clip batch, 3 runs
    python -m avdag_tests.bench.bench_platform --check         # exit 1 when the 6-clip goal is missed
    python -m avdag_tests.bench.bench_platform --quick         # 2 runs instead of 3 (`make bench BENCH_ARGS=--quick`)
    python -m avdag_tests.bench.bench_platform --sizes 6,24    # also a 24-clip batch (no goal; shows the trend)
    python -m avdag_tests.bench.bench_platform --max-new-tokens 48 --json out.json

Setup (not measured): a fresh $AVDAG_HOME with the instance config avdag ships and the embedded tiny model,
and the real `dagster-daemon` on it. Each measured run is a new batch of synthetic clips (new content, so no
caption is cached), added as a `clip_batches` partition and submitted with `dagster job launch -j
clip_batch_pipeline`: the daemon's run queue dequeues it and the code server starts a fresh run process,
exactly as for a run the landing sensor requests. Runs go one after the other, so they never share the CPUs.
The training sensor's threshold is set out of reach, so nothing but the measured runs executes.

Measured, per run, from the instance's event log:
  wall            RUN_STARTING -> RUN_SUCCESS: the run process is spawned, imports avdag, loads the
                  definitions and resources, executes every step, writes its events; the user waits this
                  long once the run leaves the queue (queue wait is reported apart).
  exec            RUN_START -> RUN_SUCCESS (the run record's start and end; process start-up excluded).
  model time      the step durations of baseline_captions (frame sampling + generate, model load included)
                  and baseline_judge_scores (the judge): what a model-serving system would spend anyway.
  platform overhead = (wall - model time) / wall; goal <= 25% for the 6-clip batch (median over the runs).
Also shown: the captioning window (first to last caption log line of the step), the summed per-clip seconds
(frames + generate share; frame sampling overlaps the previous clip's generate), "load" = window - clip sum (a
lower bound on importing torch/transformers and loading the model, which every fresh run process pays inside
the captioning step), and every other step; and the overhead share with imports + model load counted as
overhead. (The judge calibration runs once per reporting run, not in the batch run.) Each batch's seed
is chosen so that it has eval clips (the judge sees only those; "judge rows" = eval clips x questions).

The captioner runs with the platform's defaults (max_new_tokens 1024: the tiny random model never closes its
JSON, so every clip generates to the cap) unless --max-new-tokens says otherwise; a small cap shrinks the model
time and so raises the overhead share. Torch uses every core; other busy processes slow the model steps and
the run start-up unevenly (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform as platform_module
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

GOAL_CLIPS = 6
GOAL_OVERHEAD = 0.25
MODEL_STEPS = ("baseline_captions", "baseline_judge_scores")
RUN_TIMEOUT_S = 600
NEVER_TRAIN = 10**9


def seed_with_eval_clips(clips: int, after: int) -> int:
    """The first seed above `after` whose batch of `clips` has eval clips (the judge scores only those)."""
    from avdag.core.ingest.splits import split_for
    from avdag.demo.synthetic_clips import clip_id_for

    seed = after + 1
    while not any(split_for(clip_id_for(seed, i)) == "eval" for i in range(clips)):
        seed += 1
    return seed


def build_model(model_home: Path) -> Path:
    """The embedded tiny model, built as `avdag demo` builds it, into `model_home` (reused if there)."""
    previous = os.environ.get("AVDAG_HOME")
    os.environ["AVDAG_HOME"] = str(model_home)
    try:
        from avdag.resources.captioner import CaptionerResource
        from avdag.resources.storage import StateStoreResource

        return Path(CaptionerResource().base_model(StateStoreResource()))
    finally:
        if previous is None:
            os.environ.pop("AVDAG_HOME")
        else:
            os.environ["AVDAG_HOME"] = previous


def _event_times(instance, run_id: str) -> dict[str, float]:
    import dagster as dg

    wanted = {
        dg.DagsterEventType.RUN_ENQUEUED: "enqueued",
        dg.DagsterEventType.RUN_DEQUEUED: "dequeued",
        dg.DagsterEventType.RUN_STARTING: "starting",
        dg.DagsterEventType.RUN_START: "start",
        dg.DagsterEventType.RUN_SUCCESS: "end",
        dg.DagsterEventType.RUN_FAILURE: "end",
    }
    times: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type in wanted:
            times.setdefault(wanted[event.event_type], entry.timestamp)
    return times


def _caption_window(instance, run_id: str) -> float | None:
    """Seconds from the captioning step's 'captioning N' line to its last per-clip line."""
    stamps = [
        entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.step_key == "baseline_captions" and entry.user_message.startswith("[baseline]")
    ]
    return max(stamps) - min(stamps) if len(stamps) >= 2 else None


def measure_run(platform, run_id: str, partition: str) -> dict:
    """Timings of one finished run (see the module docstring)."""
    import pandas as pd

    instance = platform.instance
    record = instance.get_run_record_by_id(run_id)
    status = record.dagster_run.status.value
    if status != "SUCCESS":
        raise RuntimeError(f"run {run_id} of {partition} ended {status}:\n{platform.run_failure(run_id)}")
    times = _event_times(instance, run_id)
    steps = {
        s.step_key: s.end_time - s.start_time
        for s in instance.get_run_step_stats(run_id)
        if s.start_time is not None and s.end_time is not None
    }
    captions = pd.read_parquet(platform.home / "assets" / "baseline_captions" / f"{partition}.parquet")
    scores = pd.read_parquet(platform.home / "assets" / "baseline_judge_scores" / f"{partition}.parquet")
    judged = len(scores)  # one row per eval clip and question (scored or, with no parsable answer, not)
    wall = times["end"] - times["starting"]
    model = sum(steps.get(step, 0.0) for step in MODEL_STEPS)
    window = _caption_window(instance, run_id)
    # Importing torch/transformers and loading the model happen in the captioning step, before the first clip:
    # the window minus the clips' own seconds (a lower bound: frame sampling overlaps the previous generate).
    load = max(0.0, window - float(captions["seconds"].sum())) if window is not None else None
    return {
        "run_id": run_id,
        "partition": partition,
        "clips": len(captions),
        "queue_s": times["starting"] - record.create_timestamp.timestamp(),
        "spawn_to_start_s": times["start"] - times["starting"],
        "wall_s": wall,
        "exec_s": times["end"] - times["start"],
        "model_s": model,
        "overhead": (wall - model) / wall,
        "overhead_exec": (times["end"] - times["start"] - model) / (times["end"] - times["start"]),
        "load_s": load,
        "overhead_load_as_overhead": (wall - model + (load or 0.0)) / wall,
        "judged_items": int(judged),
        "caption_window_s": window,
        "clip_seconds_sum": float(captions["seconds"].sum()),
        "new_tokens_mean": float(captions["new_tokens"].mean()),
        "captions_cached": int(captions["cached"].sum()),
        "steps": dict(sorted(steps.items(), key=lambda kv: -kv[1])),
    }


def _wait_for(platform, run_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        record = platform.instance.get_run_record_by_id(run_id)
        if record is not None and record.dagster_run.is_finished:
            return
        if not platform.daemon_alive():
            raise RuntimeError(f"dagster-daemon died:\n{platform.daemon_log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} not finished after {timeout_s:.0f}s")
        time.sleep(0.5)


def run(sizes: list[int], repeats: int, work: Path, max_new_tokens: int | None, log=print) -> dict:
    from avdag.defs.pipeline.partitions import clip_batches
    from avdag.demo.synthetic_clips import generate_sample_batch
    from avdag_tests.support.daemon import Platform, mark_ready, platform_env, prepare_home, shipped_instance_config

    started = time.perf_counter()
    report: dict = {
        "sizes": sizes,
        "repeats": repeats,
        "max_new_tokens": max_new_tokens or "platform default",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform_module.python_version(),
            "load_average_start": os.getloadavg(),
        },
    }
    model = build_model(work / "model-home")
    home = prepare_home(work / "home", model, shipped_instance_config())
    settings = {"landing_url": str(home / "landing"), "train_after_new_clips": NEVER_TRAIN}
    if max_new_tokens:
        settings["max_new_tokens"] = max_new_tokens
    runs: list[dict] = []
    with Platform(home, platform_env(home, **settings)) as platform:
        live_s = platform.start_daemon()
        log(f"dagster-daemon live after {live_s:.0f}s; setup {time.perf_counter() - started:.0f}s")
        seed = 1000
        for clips in sizes:
            for repeat in range(1, repeats + 1):
                seed = seed_with_eval_clips(clips, seed)
                batch = f"bench-{clips}-{repeat}"
                generate_sample_batch(home / "landing", batch, clips, seed=seed)
                mark_ready(home / "landing", [batch])
                platform.instance.add_dynamic_partitions(clip_batches.name, [batch])
                run_id = str(uuid.uuid4())
                platform.launch("clip_batch_pipeline", run_id, tags={"dagster/partition": batch})
                _wait_for(platform, run_id, RUN_TIMEOUT_S)
                row = measure_run(platform, run_id, batch)
                runs.append(row)
                log(
                    f"  {batch}: wall {row['wall_s']:.1f}s, model {row['model_s']:.1f}s, "
                    f"overhead {row['overhead']:.0%} (queue {row['queue_s']:.1f}s)"
                )
    report["runs"] = runs
    report["summary"] = {str(clips): summarize([r for r in runs if r["clips"] == clips]) for clips in sizes}
    report["machine"]["load_average_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - started
    return report


def summarize(rows: list[dict]) -> dict:
    def spread(key: str) -> dict:
        values = [r[key] for r in rows if r[key] is not None]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {}

    keys = (
        "wall_s",
        "exec_s",
        "spawn_to_start_s",
        "model_s",
        "overhead",
        "overhead_exec",
        "overhead_load_as_overhead",
        "caption_window_s",
        "load_s",
    )
    return {"runs": len(rows), **{key: spread(key) for key in keys}}


def goal_met(report: dict) -> bool | None:
    summary = report["summary"].get(str(GOAL_CLIPS))
    if not summary or not summary["overhead"]:
        return None
    return summary["overhead"]["median"] <= GOAL_OVERHEAD


def format_report(report: dict) -> str:
    lines = [
        f"platform overhead of a clip_batch_pipeline run started by the daemon "
        f"(max_new_tokens: {report['max_new_tokens']}; {report['repeats']} runs per size)",
        "",
        f"{'batch':<14}{'clips':>6}{'queue':>8}{'spawn':>8}{'wall':>8}{'exec':>8}{'model':>8}{'capt.win':>9}"
        f"{'clip sum':>9}{'load':>7}{'tokens':>8}{'judge rows':>11}{'overhead':>10}{'(exec)':>8}",
    ]
    for r in report["runs"]:
        window = f"{r['caption_window_s']:.1f}" if r["caption_window_s"] is not None else "-"
        lines.append(
            f"{r['partition']:<14}{r['clips']:>6}{r['queue_s']:>8.1f}{r['spawn_to_start_s']:>8.1f}{r['wall_s']:>8.1f}"
            f"{r['exec_s']:>8.1f}{r['model_s']:>8.1f}{window:>9}{r['clip_seconds_sum']:>9.1f}{r['load_s'] or 0:>7.1f}"
            f"{r['new_tokens_mean']:>8.0f}{r['judged_items']:>11}{r['overhead']:>10.0%}{r['overhead_exec']:>8.0%}"
        )
    lines.append("")
    for clips, s in report["summary"].items():
        if not s["overhead"]:
            continue
        o, w, m = s["overhead"], s["wall_s"], s["model_s"]
        verdict = ""
        if int(clips) == GOAL_CLIPS:
            met = o["median"] <= GOAL_OVERHEAD
            verdict = f"  (goal <= {GOAL_OVERHEAD:.0%}: {'met' if met else 'MISSED'})"
        lines.append(
            f"{clips} clips: overhead median {o['median']:.1%} [{o['min']:.0%}..{o['max']:.0%}]{verdict}; "
            f"wall median {w['median']:.1f}s [{w['min']:.1f}..{w['max']:.1f}], "
            f"model median {m['median']:.1f}s [{m['min']:.1f}..{m['max']:.1f}]"
        )
        lines.append(
            f"  start-up (RUN_STARTING->RUN_START) median {s['spawn_to_start_s']['median']:.1f}s; overhead median "
            f"without start-up {s['overhead_exec']['median']:.0%}, with imports and model load counted as "
            f"overhead {s['overhead_load_as_overhead']['median']:.0%}"
        )
    if report["runs"]:
        last = report["runs"][-1]
        other = {k: round(v, 1) for k, v in last["steps"].items() if k not in MODEL_STEPS}
        lines.append(f"other steps of {last['partition']} (s): {json.dumps(other)}")
    machine = report["machine"]
    load = machine["load_average_start"][0], machine["load_average_end"][0]
    lines.append(
        f"machine: {machine['cpus']} CPUs, python {machine['python']}, load average {load[0]:.1f} -> {load[1]:.1f}; "
        f"total {report['total_s']:.0f}s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avdag_tests.bench.bench_platform", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default=str(GOAL_CLIPS), help="comma-separated batch sizes (clips); default 6")
    parser.add_argument("--repeats", type=int, default=None, help="runs per size (default 3, 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 runs per size")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="captioner cap (default: the platform's)")
    parser.add_argument("--work", type=Path, default=None, help="keep the home here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the {GOAL_CLIPS}-clip goal is missed")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    repeats = args.repeats or (2 if args.quick else 3)
    work = args.work or Path(tempfile.mkdtemp(prefix="avdag-bench-platform-"))
    if args.work and (work / "home").exists():
        shutil.rmtree(work / "home")  # a fresh instance every time; the model folder is reused
    try:
        report = run(sizes, repeats, work, args.max_new_tokens, log=lambda m: print(m, flush=True))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    met = goal_met(report)
    if args.check and met is False:
        print(f"bench_platform --check: the {GOAL_CLIPS}-clip overhead goal is missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
